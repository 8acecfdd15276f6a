//! The restart bench's load: clients sending `GET /` back to back, half on keep-alive
//! connections (honouring `Connection: close`), half opening a fresh connection per request, with
//! refused connects, other socket errors and failed answers counted apart.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::common::DEADLINE;

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Figures {
    pub ok: u64,
    /// Answers other than 2xx/3xx.
    pub failed: u64,
    /// Connects refused: nobody listened.
    pub refused: u64,
    /// Any other broken exchange: reset, closed before the answer, timeout.
    pub socket: u64,
}

/// `clients` clients sending `GET /` back to back: even ones keep their connection alive (and
/// honour `Connection: close`), odd ones open a fresh connection per request.
pub struct Load {
    stop: Arc<AtomicBool>,
    counters: Arc<[AtomicU64; 4]>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Default::default());
        let tasks = (0..clients)
            .map(|i| {
                tokio::spawn(client(
                    addr,
                    i % 2 == 0,
                    stop.clone(),
                    Arc::clone(&counters),
                ))
            })
            .collect();
        Load {
            stop,
            counters,
            tasks,
        }
    }

    pub async fn wait_for_more_ok(&self, n: u64) {
        let start = self.counters[0].load(Ordering::Relaxed);
        let deadline = Instant::now() + DEADLINE;
        while self.counters[0].load(Ordering::Relaxed) < start + n {
            assert!(Instant::now() < deadline, "no traffic for {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn stop(self) -> Figures {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let [ok, failed, refused, socket] = &*self.counters;
        Figures {
            ok: ok.load(Ordering::Relaxed),
            failed: failed.load(Ordering::Relaxed),
            refused: refused.load(Ordering::Relaxed),
            socket: socket.load(Ordering::Relaxed),
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn client(
    addr: SocketAddr,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
    counters: Arc<[AtomicU64; 4]>,
) {
    let [ok, failed, refused, socket] = &*counters;
    let mut sender: Option<Sender> = None;
    while !stop.load(Ordering::Relaxed) {
        if sender.is_none() {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => {
                    match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                        Ok((s, conn)) => {
                            tokio::spawn(conn);
                            sender = Some(s);
                        }
                        Err(_) => {
                            socket.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                Err(e) => {
                    let counter = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        refused
                    } else {
                        socket
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        match get(s, addr, keep_alive).await {
            Ok((status, close)) => {
                let counter = if status < 400 { ok } else { failed };
                counter.fetch_add(1, Ordering::Relaxed);
                if close || !keep_alive {
                    sender = None;
                }
            }
            Err(_) => {
                socket.fetch_add(1, Ordering::Relaxed);
                sender = None;
            }
        }
    }
}

/// One `GET /`: the status and whether the server closes the connection after it.
async fn get(
    sender: &mut Sender,
    addr: SocketAddr,
    keep_alive: bool,
) -> Result<(u16, bool), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let mut request = http::Request::get("/").header(http::header::HOST, addr.to_string());
    if !keep_alive {
        request = request.header(http::header::CONNECTION, "close");
    }
    let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .map_err(|_| "no answer within 30s".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let close = response
        .headers()
        .get(http::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, close))
}
