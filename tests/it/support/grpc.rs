//! A small gRPC client of the test's own: unary calls of the demo app's echo method
//! (`/cutover.demo.Echo/Say`) over HTTP/2 without TLS, framed as gRPC frames its messages
//! (a compression flag, a 4-byte length), with the status read from the trailers; a load of
//! such calls that counts every failure (a [`Load`]); and the scenario the h2c and h2 upstream
//! tests share (an echo, then a blue-green deploy under load).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::app::App;
use super::load::{note_error, Load, LoadReport};
use super::supervisor::{Supervisor, ROLLOUT};

pub const SAY: &str = "/cutover.demo.Echo/Say";

/// One HTTP/2 connection to a proxy (or an instance).
#[derive(Clone)]
pub struct GrpcClient {
    sender: http2::SendRequest<Full<Bytes>>,
}

/// What a call got back: the gRPC status and the message, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub message: Bytes,
    /// The `x-request-id` the proxy gave the call, if it did.
    pub request_id: Option<String>,
}

impl GrpcClient {
    pub async fn connect(addr: SocketAddr) -> Result<GrpcClient, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(GrpcClient { sender })
    }

    /// Calls `Say` with `message`; an error for anything but a gRPC answer with a status.
    pub async fn say(&mut self, authority: &str, message: &[u8]) -> Result<Reply, String> {
        let mut frame = BytesMut::with_capacity(5 + message.len());
        frame.put_u8(0);
        frame.put_u32(message.len() as u32);
        frame.put_slice(message);
        let request = http::Request::post(format!("http://{authority}{SAY}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(frame.freeze()))
            .map_err(|e| e.to_string())?;
        self.sender
            .ready()
            .await
            .map_err(|e| format!("ready: {e}"))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        if response.status() != 200 {
            return Err(format!("HTTP status {}", response.status()));
        }
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let collected = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        let status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or("no grpc-status in the trailers")?;
        let body = collected.to_bytes();
        let message = if body.len() >= 5 {
            body.slice(5..)
        } else {
            Bytes::new()
        };
        Ok(Reply {
            status,
            message,
            request_id,
        })
    }
}

/// `calls` concurrent callers, each on a connection of its own (re-made after an error),
/// counting OK answers (status 0, the message echoed) as ok, other statuses as failures by
/// status, and broken calls as socket errors.
pub fn load(addr: SocketAddr, calls: usize) -> Load {
    Load::spawn(calls, move |i, stop, report| caller(addr, i, stop, report))
}

async fn caller(addr: SocketAddr, i: usize, stop: Arc<AtomicBool>, report: Arc<Mutex<LoadReport>>) {
    let mut client = None;
    let message = format!("call from {i}");
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            match GrpcClient::connect(addr).await {
                Ok(c) => client = Some(c),
                Err(err) => {
                    note_error(&mut report.lock().unwrap(), err);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let outcome = c.say("grpc.test", message.as_bytes()).await;
        let mut report = report.lock().unwrap();
        match outcome {
            Ok(reply) if reply.status == 0 && reply.message == message.as_bytes() => report.ok += 1,
            Ok(reply) => *report.failed.entry(reply.status as u16).or_default() += 1,
            Err(err) => {
                note_error(&mut report, err);
                client = None;
            }
        }
    }
}

/// One call of the echo method through the proxy at `addr`, on a runtime of its own.
pub fn call(addr: SocketAddr, message: &[u8]) -> Result<Reply, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut client = GrpcClient::connect(addr).await?;
        client.say("grpc.test", message).await
    })
}

/// A call to `app` passes with its trailers and the proxy's request id; then a blue-green
/// deploy of v2 under four concurrent callers fails none, and only v2 serves, every call
/// counted as answered.
pub fn echo_then_blue_green_under_load(app: &App, supervisor: &Supervisor) {
    let reply = call(app.listen, b"hello").expect("a gRPC answer");
    assert_eq!(reply.status, 0, "{reply:?}");
    assert_eq!(&reply.message[..], b"hello");
    assert!(
        reply.request_id.is_some(),
        "the proxy's request id: {reply:?}"
    );

    let load = load(app.listen, 4);
    load.wait_for_more_answers(100, ROLLOUT);
    supervisor.deploy_ok(app, "v2");
    load.wait_for_more_answers(100, ROLLOUT);
    let report = load.stop();
    assert_eq!(report.failures(), 0, "{report:?}");
    assert!(report.ok >= 200, "{report:?}");
    let live = supervisor.status(app).instances;
    assert!(live.iter().all(|i| i.version == "v2"), "{live:?}");
    assert!(
        live.iter().all(|i| i.errors_5xx == 0 && i.requests > 0),
        "counted as answered: {live:?}"
    );
}
