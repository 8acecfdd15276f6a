//! The demo app: a small HTTP/1.1 server with fault injection that stands in for a real app in the
//! README demo and in every supervisor and proxy test.
//!
//! Routes: `GET /` (hello with version and pid), `/healthz`, `/slow?ms=N`,
//! `/stream?chunks=N&interval_ms=M`, `/bytes?n=N` (a body of N bytes, as fast as it is taken),
//! `/upload` (reads the whole request body, answers its length), a WebSocket echo on `/ws` and a
//! gRPC echo (`grpc`; with `--h2c` the app speaks HTTP/2 only, as gRPC servers do, and with
//! `--tls-cert`/`--tls-key` HTTP/2 over TLS only, `tls`). Faults (fail at boot, never
//! healthy, crash after a while, an error rate, a slow boot) come from flags or the environment so
//! that a manifest's `env:` can switch them on. SIGTERM stops accepting, lets in-flight requests
//! finish and exits 0, as a well-behaved app should.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{grpc, websocket};

/// How the demo app behaves; built from `cutover demo-app` flags.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// Shown in `GET /` so a test or a person can see which release answered.
    pub version: String,
    /// Exit 3 at once, before listening: a release that cannot start.
    pub fail_boot: bool,
    /// `/healthz` answers 500 forever: a release that never becomes healthy.
    pub never_healthy: bool,
    /// Exit 1 this long after starting to serve: a release that crashes in production.
    pub crash_after: Option<Duration>,
    /// Share of `GET /` answered with 500 (0.0 to 1.0): a release a canary should catch.
    pub error_rate: f64,
    /// Sleep this long before listening: a slow boot.
    pub boot_delay: Duration,
    /// Wait this long before answering `GET /`: a slow release a canary should catch.
    pub delay: Duration,
    /// Share of the connections whose first request is `GET /` that are closed with it unread
    /// (so the kernel resets them), unanswered: a release whose workers die mid-request.
    pub drop_rate: f64,
    /// Serve HTTP/2 without TLS only (prior knowledge), as a gRPC server does.
    pub h2c: bool,
    /// Serve HTTP/2 over TLS only (ALPN `h2`) with this certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The status of the gRPC echo method's answers (0: OK; 13: INTERNAL, a failing release).
    pub grpc_status: u32,
}

/// Exit codes of the demo app, so tests can tell its failure modes apart.
pub const EXIT_FAIL_BOOT: u8 = 3;
pub const EXIT_CRASH: u8 = 1;

type Body = BoxBody<Bytes, Infallible>;

struct App {
    config: Config,
    pid: u32,
    /// Spreads `--error-rate` evenly instead of randomly, so a test with a rate of 0.5 sees
    /// exactly every other request fail.
    served: AtomicU64,
    /// The same for `--drop-rate`, over the connections that ask `GET /` first.
    asked: AtomicU64,
    /// Flips to true on SIGTERM; upgraded WebSocket connections watch it to close.
    shutdown: watch::Receiver<bool>,
    /// `--tls-cert`/`--tls-key`: every connection is TLS, and HTTP/2 within.
    tls: Option<TlsAcceptor>,
}

/// Runs the demo app until SIGTERM (exit 0) or an injected fault (non-zero); returns the exit code.
pub fn run(config: Config) -> u8 {
    if config.fail_boot {
        eprintln!("demo-app: failing at boot as asked (--fail-boot)");
        return EXIT_FAIL_BOOT;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("demo-app: cannot start the async runtime: {err}");
            return 1;
        }
    };
    runtime.block_on(serve(config))
}

/// The socket a supervisor handed over the systemd way (fd 3, `LISTEN_FDS=1`, `LISTEN_PID` ours),
/// if it did: `socket_activation: true` in the app's spec.
fn handed_over() -> Option<std::io::Result<TcpListener>> {
    let ours = std::env::var("LISTEN_PID").ok()? == std::process::id().to_string();
    if !ours || std::env::var("LISTEN_FDS").ok()? != "1" {
        return None;
    }
    eprintln!("demo-app: serving on the socket handed over as fd 3");
    // SAFETY: LISTEN_FDS=1 with our pid says fd 3 is a listening socket given to this process,
    // and nothing else in it owns fd 3.
    let socket = unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(3) };
    Some(
        socket
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(socket)),
    )
}

async fn serve(config: Config) -> u8 {
    tokio::time::sleep(config.boot_delay).await;
    let listener = match handed_over() {
        Some(listener) => listener,
        None => TcpListener::bind(config.addr).await,
    };
    let listener = match listener {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("demo-app: cannot listen on {}: {err}", config.addr);
            return 1;
        }
    };
    let tls = match &config.tls {
        Some((cert, key)) => match super::tls::acceptor(cert, key) {
            Ok(acceptor) => Some(acceptor),
            Err(err) => {
                eprintln!("demo-app: cannot serve TLS: {err}");
                return 1;
            }
        },
        None => None,
    };
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            eprintln!("demo-app: cannot install the SIGTERM handler: {err}");
            return 1;
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let crash = config.crash_after;
    let app = Arc::new(App {
        pid: std::process::id(),
        served: AtomicU64::new(0),
        asked: AtomicU64::new(0),
        shutdown: stop_rx,
        tls,
        config,
    });
    eprintln!(
        "demo-app: {} listening on {} (pid {})",
        app.config.version, app.config.addr, app.pid
    );
    let crash_at = async move {
        match crash {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(crash_at);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                connections.spawn(connection(app.clone(), stream));
                // Reap finished connection tasks so the set does not grow for ever.
                while connections.try_join_next().is_some() {}
            }
            _ = term.recv() => break,
            _ = &mut crash_at => {
                eprintln!("demo-app: crashing as asked (--crash-after)");
                return EXIT_CRASH;
            }
        }
    }
    // Graceful stop: no new connections; every connection finishes its request in flight and
    // closes; WebSockets get a close frame.
    drop(listener);
    eprintln!("demo-app: SIGTERM, finishing in-flight requests");
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    0
}

async fn connection(app: Arc<App>, stream: tokio::net::TcpStream) {
    if app.config.drop_rate > 0.0 && asks_for_root(&stream).await {
        let n = app.asked.fetch_add(1, Ordering::Relaxed);
        if due(n, app.config.drop_rate) {
            // Closed with the request unread: the client gets a reset, not an answer.
            return;
        }
    }
    let mut shutdown = app.shutdown.clone();
    let service = {
        let app = app.clone();
        service_fn(move |req| handle(app.clone(), req))
    };
    if let Some(acceptor) = &app.tls {
        match acceptor.accept(stream).await {
            Ok(stream) => serve_h2(TokioIo::new(stream), service, shutdown).await,
            Err(err) => eprintln!("demo-app: TLS handshake failed: {err}"),
        }
        return;
    }
    if app.config.h2c {
        serve_h2(TokioIo::new(stream), service, shutdown).await;
        return;
    }
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stopped(&mut shutdown) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// HTTP/2 on `io` until it closes or SIGTERM, then GOAWAY: the streams in progress finish.
async fn serve_h2<T, S>(io: TokioIo<T>, service: S, mut shutdown: watch::Receiver<bool>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Send + 'static,
    S::Future: Send + 'static,
{
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stopped(&mut shutdown) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let query = req.uri().query().unwrap_or("");
    let response = match req.uri().path() {
        "/" => {
            // Not even a zero sleep otherwise: it waits for the timer's next tick (~1 ms).
            if !app.config.delay.is_zero() {
                tokio::time::sleep(app.config.delay).await;
            }
            hello(&app)
        }
        "/healthz" if app.config.never_healthy => {
            text(StatusCode::INTERNAL_SERVER_ERROR, "never healthy\n")
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/slow" => {
            let ms = query_u64(query, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, "slow done\n")
        }
        "/stream" => stream(
            query_u64(query, "chunks").unwrap_or(5),
            Duration::from_millis(query_u64(query, "interval_ms").unwrap_or(100)),
        ),
        "/bytes" => bytes(query_u64(query, "n").unwrap_or(0)),
        "/upload" => match req.into_body().collect().await {
            Ok(body) => text(
                StatusCode::OK,
                format!("received {} bytes\n", body.to_bytes().len()),
            ),
            Err(err) => text(StatusCode::BAD_REQUEST, format!("body failed: {err}\n")),
        },
        "/ws" => upgrade_to_websocket(app.clone(), req),
        grpc::SAY => grpc::say(req, app.config.grpc_status).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

fn hello(app: &App) -> Response<Body> {
    let n = app.served.fetch_add(1, Ordering::Relaxed);
    let status = if due(n, app.config.error_rate) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let body = format!("hello from {} (pid {})\n", app.config.version, app.pid);
    text(status, body)
}

/// Whether event `n` (from 0) is one of a `rate` share: when the running count of those due
/// crosses an integer, so the shares are exact rather than random.
fn due(n: u64, rate: f64) -> bool {
    let rate = rate.clamp(0.0, 1.0);
    ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor()
}

/// Whether the connection's first request starts `GET / ` (looked at without reading it, within
/// a second).
async fn asks_for_root(stream: &tokio::net::TcpStream) -> bool {
    const START: &[u8] = b"GET / ";
    let mut head = [0u8; START.len()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        match stream.peek(&mut head).await {
            Ok(n) if n == head.len() => return head == START,
            // A request head comes in one piece in practice; a partial one is waited for.
            Ok(n) if n > 0 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            _ => return false,
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

/// `chunks` lines, one every `interval`, sent as they are made (chunked transfer).
fn stream(chunks: u64, interval: Duration) -> Response<Body> {
    let body = futures_util::stream::unfold(0u64, move |i| async move {
        if i >= chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        let line = Bytes::from(format!("chunk {i}\n"));
        Some((Ok::<_, Infallible>(Frame::data(line)), i + 1))
    });
    Response::new(StreamBody::new(body).boxed())
}

/// `n` bytes of `x` with a `content-length`, made 64 KiB at a time as the client takes them.
fn bytes(n: u64) -> Response<Body> {
    const CHUNK: u64 = 64 * 1024;
    let block = Bytes::from(vec![b'x'; CHUNK as usize]);
    let body = futures_util::stream::unfold(0u64, move |sent| {
        let block = block.clone();
        async move {
            let len = (n - sent).min(CHUNK);
            (len > 0).then(|| {
                let frame = Frame::data(block.slice(..len as usize));
                (Ok::<_, Infallible>(frame), sent + len)
            })
        }
    });
    let mut response = Response::new(StreamBody::new(body).boxed());
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(n));
    response
}

fn query_u64(query: &str, key: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// Resolves once SIGTERM has been received (or the sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The RFC 6455 handshake: answer 101 with the accept hash, then echo frames on the raw stream.
fn upgrade_to_websocket(app: Arc<App>, mut req: Request<Incoming>) -> Response<Body> {
    let wants_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    };
    if !wants_ws {
        return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    }
    let accept = websocket::sec_websocket_accept(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let _ = websocket::echo(TokioIo::new(upgraded), app.shutdown.clone()).await;
        }
    });
    let mut response = Response::new(Empty::new().boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(value) = header::HeaderValue::from_str(&accept) {
        headers.insert("sec-websocket-accept", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_found_by_key() {
        assert_eq!(
            query_u64("chunks=3&interval_ms=20", "interval_ms"),
            Some(20)
        );
        assert_eq!(query_u64("chunks=x", "chunks"), None);
        assert_eq!(query_u64("", "ms"), None);
    }
}
