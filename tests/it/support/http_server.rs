//! A small HTTP/1.1 server on 127.0.0.1 serving in-memory files, with failure modes: a status
//! code, a connection cut after N bytes (once), a stall, a redirect, Range support on or off.
//! It counts requests and records their heads. Stopped on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a path answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// 200 (or 206 for a range request when ranges are on).
    Normal,
    /// This status with a short text body.
    Status(u16),
    /// The first response stops after this many body bytes and closes; later ones are whole.
    CutOnce(usize),
    /// Headers, then nothing until the server stops (or 60 s).
    Stall,
    /// 302 to this path.
    Redirect(String),
}

#[derive(Debug)]
struct Route {
    body: Vec<u8>,
    mode: Mode,
    ranges: bool,
    cut_done: bool,
}

#[derive(Debug, Default)]
struct Shared {
    routes: Mutex<HashMap<String, Route>>,
    /// Request heads (request line and headers), in arrival order.
    requests: Mutex<Vec<String>>,
    stop: AtomicBool,
}

pub struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test HTTP server");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let for_thread = Arc::clone(&shared);
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if for_thread.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let shared = Arc::clone(&for_thread);
                std::thread::spawn(move || {
                    let _ = handle(conn, &shared);
                });
            }
        });
        HttpServer {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// Serves `body` at `path` normally, with Range support.
    pub fn serve(&self, path: &str, body: Vec<u8>) {
        self.serve_with(path, body, Mode::Normal, true);
    }

    pub fn serve_with(&self, path: &str, body: Vec<u8>, mode: Mode, ranges: bool) {
        let route = Route {
            body,
            mode,
            ranges,
            cut_done: false,
        };
        self.shared
            .routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), route);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Number of requests received so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// Heads of the requests received so far.
    pub fn request_heads(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn handle(conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    if head.is_empty() {
        return Ok(());
    }
    shared.requests.lock().unwrap().push(head.clone());
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let range_start = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("range: bytes=")
                .map(str::to_owned)
        })
        .and_then(|r| r.trim().trim_end_matches('-').parse::<usize>().ok());

    let mut conn = conn;
    let (body, mode, ranges, cut) = {
        let mut routes = shared.routes.lock().unwrap();
        let Some(route) = routes.get_mut(&path) else {
            return respond(&mut conn, "404 Not Found", &[], b"not found\n");
        };
        let cut = match route.mode {
            Mode::CutOnce(n) if !route.cut_done => {
                route.cut_done = true;
                Some(n)
            }
            _ => None,
        };
        (route.body.clone(), route.mode.clone(), route.ranges, cut)
    };
    match mode {
        Mode::Status(code) => {
            let status = match code {
                404 => "404 Not Found",
                500 => "500 Internal Server Error",
                403 => "403 Forbidden",
                _ => "599 Test Status",
            };
            respond(&mut conn, status, &[], b"failure page\n")
        }
        Mode::Redirect(to) => respond(&mut conn, "302 Found", &[("Location", &to)], b""),
        Mode::Stall => {
            let len = body.len().to_string();
            write_head(&mut conn, "200 OK", &[("Content-Length", &len)])?;
            conn.write_all(&body[..body.len().min(100)])?;
            let until = Instant::now() + Duration::from_secs(60);
            while !shared.stop.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        }
        Mode::Normal | Mode::CutOnce(_) => {
            let (status, from) = match range_start {
                Some(start) if ranges && start < body.len() => ("206 Partial Content", start),
                _ => ("200 OK", 0),
            };
            let len = (body.len() - from).to_string();
            let content_range = format!(
                "bytes {from}-{}/{}",
                body.len().saturating_sub(1),
                body.len()
            );
            let mut headers = vec![("Content-Length", len.as_str()), ("Accept-Ranges", "bytes")];
            if from > 0 {
                headers.push(("Content-Range", &content_range));
            }
            write_head(&mut conn, status, &headers)?;
            match cut {
                Some(n) => {
                    conn.write_all(&body[from..(from + n).min(body.len())])?;
                    conn.flush()?;
                    conn.shutdown(std::net::Shutdown::Both)
                }
                None => conn.write_all(&body[from..]),
            }
        }
    }
}

fn write_head(conn: &mut TcpStream, status: &str, headers: &[(&str, &str)]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())
}

fn respond(
    conn: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let len = body.len().to_string();
    let mut all = vec![("Content-Length", len.as_str())];
    all.extend_from_slice(headers);
    write_head(conn, status, &all)?;
    conn.write_all(body)
}
