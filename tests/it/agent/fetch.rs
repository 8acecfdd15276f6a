//! The fetch flags through the real binary against a local HTTP origin: retry, the overall
//! timeout, the bandwidth cap, and HTTP errors (which must fail cleanly and leave dest alone).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{sha256_hex, tar_gz, Entry, Site};

/// What the origin answers to the n-th request (0-based) for a path.
pub enum Reply {
    Status(u16),
    Body(Vec<u8>),
    /// Send headers, then hold the connection open without a body until the client gives up.
    Stall,
    /// Send `head`, then `body` again and again, without a length and without end.
    Endless {
        head: Vec<u8>,
        body: Vec<u8>,
    },
}

/// A tiny HTTP/1.1 origin on 127.0.0.1, one thread per connection, stopped on drop.
pub struct Origin {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Origin {
    pub fn start(reply: impl Fn(usize, &str) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let reply = Arc::new(reply);
        let (count, stopping) = (requests.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (reply, count) = (reply.clone(), count.clone());
                std::thread::spawn(move || serve(conn, &*reply, &count));
            }
        });
        Origin {
            addr,
            requests,
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

fn serve(mut conn: TcpStream, reply: &dyn Fn(usize, &str) -> Reply, count: &AtomicUsize) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let n = count.fetch_add(1, Ordering::SeqCst);
    match reply(n, &path) {
        Reply::Status(code) => {
            let body = format!("error {code}\n");
            let _ = write!(
                conn,
                "HTTP/1.1 {code} Oops\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        Reply::Body(body) => {
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(&body);
        }
        Reply::Endless { head, body } => {
            let _ = write!(conn, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            // Until the client hangs up: no timer involved.
            if conn.write_all(&head).is_ok() {
                while conn.write_all(&body).is_ok() {}
            }
        }
        Reply::Stall => {
            let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
            // Blocks until the client closes the connection: no timer involved.
            let _ = conn.read(&mut [0u8; 1]);
        }
    }
}

fn archive() -> (Vec<u8>, String) {
    let bytes = tar_gz(None, &[Entry::File("index.html", b"from http\n")]);
    let sum = sha256_hex(&bytes);
    (bytes, sum)
}

fn manifest(site: &Site, src: &str, sum: &str) -> String {
    site.manifest(
        "m.yml",
        &format!("src: {src}\nchecksum: {sum}\ndest: @DEST@\ncommands:\n  pre:\n    - touch pre-ran\n  failure:\n    - touch failure-ran\n"),
    )
}

#[test]
fn retry_recovers_from_server_errors() {
    let site = Site::new();
    let (bytes, sum) = archive();
    let origin = Origin::start(move |n, _| {
        if n < 2 {
            Reply::Status(503)
        } else {
            Reply::Body(bytes.clone())
        }
    });
    let url = manifest(&site, &origin.url("/app.tar.gz"), &sum);
    site.run(&url, &["-retry", "2", "-retry-wait", "0.1"])
        .expect_code(0);
    assert_eq!(origin.requests.load(Ordering::SeqCst), 3);
    assert!(site.dest().join("index.html").exists());
}

#[test]
fn without_retry_a_server_error_fails_and_dest_is_untouched() {
    for code in [404, 500] {
        let site = Site::new();
        let before = site.existing_dest("keep", "v1");
        let origin = Origin::start(move |_, _| Reply::Status(code));
        let (_, sum) = archive();
        let url = manifest(&site, &origin.url("/app.tar.gz"), &sum);
        site.run(&url, &[])
            .expect_code(1)
            .expect_stderr(&code.to_string())
            .expect_stderr("Deploy manifest failed");
        site.assert_failed_cleanly(&before, &format!("HTTP {code}"));
        assert!(
            !site.path("cwd/pre-ran").exists(),
            "pre does not run on HTTP {code}"
        );
    }
}

#[test]
fn an_unreachable_origin_fails_cleanly() {
    let site = Site::new();
    let port = crate::support::free_port();
    let (_, sum) = archive();
    let url = manifest(&site, &format!("http://127.0.0.1:{port}/app.tar.gz"), &sum);
    site.run(&url, &["--timeout=20s"])
        .expect_code(1)
        .expect_stderr("Deploy manifest failed");
    assert!(site.path("cwd/failure-ran").exists());
    assert!(!site.dest().exists());
}

#[test]
fn a_manifest_404_is_an_error_not_a_manifest() {
    let site = Site::new();
    let origin = Origin::start(|_, _| Reply::Status(404));
    site.run(&origin.url("/manifest.yml"), &[])
        .expect_code(1)
        .expect_stderr("could not fetch manifest")
        .expect_stderr("404");
}

#[test]
fn the_timeout_bounds_a_stalled_download() {
    let site = Site::new();
    let origin = Origin::start(|_, _| Reply::Stall);
    let (_, sum) = archive();
    let url = manifest(&site, &origin.url("/app.tar.gz"), &sum);
    let start = Instant::now();
    site.run(&url, &["-timeout", "1"])
        .expect_code(1)
        .expect_stderr("Deploy manifest failed");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    assert!(site.path("cwd/failure-ran").exists());
}

#[test]
fn the_bandwidth_cap_slows_the_download() {
    let site = Site::new();
    // Incompressible bytes so that the archive is as large as its content.
    let noise: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let bytes = tar_gz(None, &[Entry::File("blob", &noise)]);
    let sum = sha256_hex(&bytes);
    let size = bytes.len() as f64;
    let origin = Origin::start(move |_, _| Reply::Body(bytes.clone()));
    let url = manifest(&site, &origin.url("/app.tar.gz"), &sum);
    let start = Instant::now();
    site.run(&url, &["--max-band-width=100K"]).expect_code(0);
    let took = start.elapsed().as_secs_f64();
    // 300 kB at 100 kB/s: about 3 s; allow a first-second burst.
    assert!(
        took >= size / 100_000.0 - 1.2,
        "{size} bytes took {took:.2}s at 100 kB/s"
    );
}

#[test]
fn manifest_and_src_on_s3_deploy_like_stretcher() {
    let moto = crate::support::s3::Moto::start();
    let site = Site::new();
    let (bytes, sum) = archive();
    let manifest = format!(
        "src: s3://releases/app.tar.gz\nchecksum: {sum}\ndest: {}\n",
        site.dest().display()
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(moto.put("releases", "app.tar.gz", bytes));
    runtime.block_on(moto.put("releases", "manifest.yml", manifest.into_bytes()));
    let mut cmd = site.agent();
    cmd.envs(moto.env());
    site.run_with(&mut cmd, "s3://releases/manifest.yml\n")
        .expect_code(0)
        .expect_stderr("Deploy manifest succeeded: s3://releases/manifest.yml");
    assert_eq!(super::read(&site.dest().join("index.html")), "from http\n");

    // A missing key is a clean failure, not a 404 page read as a manifest.
    let mut cmd = site.agent();
    cmd.envs(moto.env());
    site.run_with(&mut cmd, "s3://releases/nope.yml\n")
        .expect_code(1)
        .expect_stderr("could not fetch manifest");
}
