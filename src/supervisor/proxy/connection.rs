//! One accepted client connection, from its first byte to hyper: the PROXY protocol header (when
//! the address expects one), TCP mode's pipe, the TLS handshake (when an app on the address has
//! a certificate), then the protocol — HTTP/2 when ALPN chose it or, with `h2c`, when the client
//! opens with HTTP/2's preface; HTTP/1.1 otherwise.
//!
//! The client's socket is [`Watched`], so that the connection's timer can tell a client that does
//! not take its response.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::challenges::ACME_TLS_ALPN;
use super::downstream::{self, OpenCount};
use super::state::ProxyState;
use super::{forward, proxy_protocol, tcp};

/// The longest a client may take over its TLS handshake (or to send HTTP/2's preface).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What HTTP/2 without TLS opens with (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams one HTTP/2 client may have open at once (nginx's `http2_max_concurrent_streams`).
const MAX_STREAMS: u32 = 128;

/// How each worker builds hyper's side of a connection.
#[derive(Debug, Clone)]
pub(super) struct Protocols {
    http1: Arc<hyper::server::conn::http1::Builder>,
    http2: Arc<hyper::server::conn::http2::Builder<TokioExecutor>>,
}

impl Protocols {
    pub fn new() -> Protocols {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        // No header read timeout: hyper arms one per request, which costs a timer (and often a
        // wake-up of the runtime) each time. The app's `idle_timeout` closes slow and idle
        // connections instead, with one timer per connection. No vectored writes: the head and
        // a body chunk copied into one buffer and sent with one `write` cost less than a
        // `writev` of the two (about 5 % more requests/s in the proxy bench).
        http1
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(None)
            .writev(false);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        // Rapid resets (CVE-2023-44487): streams a client opens and cancels before the proxy
        // takes them, and streams the proxy must reset for the client's errors, are capped; past
        // either the connection is closed with GOAWAY.
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .max_pending_accept_reset_streams(Some(64))
            .max_local_error_reset_streams(Some(256))
            .max_header_list_size(64 * 1024);
        Protocols {
            http1: Arc::new(http1),
            http2: Arc::new(http2),
        }
    }
}

/// Serves one accepted connection to its end.
pub(super) async fn serve(
    proxy: Arc<ProxyState>,
    worker: usize,
    (mut stream, peer): (TcpStream, SocketAddr),
    downstream_conn: Arc<downstream::Conn>,
    open_count: Arc<OpenCount>,
    protocols: Protocols,
) {
    let mut client_ip = peer.ip();
    if proxy.proxy_protocol.load(Ordering::Relaxed) {
        match proxy_protocol::read_header(&mut stream).await {
            Ok(Some(ip)) => client_ip = ip,
            Ok(None) => {}
            Err(err) => {
                tracing::debug!(%peer, "connection closed: {err}");
                return;
            }
        }
    }
    if proxy.tcp.load(Ordering::Relaxed) {
        tcp::pipe(proxy, worker, stream, downstream_conn).await;
        return;
    }
    let mut accepted = downstream::Accepted {
        client_ip: hyper::header::HeaderValue::from_str(&client_ip.to_string())
            .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("unknown")),
        worker,
        open_count,
        conn: downstream_conn.clone(),
        tls: false,
        multiplexed: false,
    };
    if proxy.tls_on.load(Ordering::Relaxed) {
        let acceptor = proxy.tls.acceptor.clone();
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return tracing::debug!(%peer, "TLS handshake failed: {err}"),
            Err(_) => {
                return tracing::debug!(%peer, "no TLS handshake within {HANDSHAKE_TIMEOUT:?}")
            }
        };
        if stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
            // A TLS-ALPN-01 check ends with the handshake (RFC 8737 section 3).
            let mut stream = stream;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            return;
        }
        accepted.tls = true;
        accepted.multiplexed = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        return http(proxy, accepted, stream, peer, protocols).await;
    }
    if proxy.h2c.load(Ordering::Relaxed) {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, opens_with_preface(&stream)).await {
            Ok(Ok(h2)) => accepted.multiplexed = h2,
            Ok(Err(err)) => return tracing::debug!(%peer, "connection closed: {err}"),
            Err(_) => return tracing::debug!(%peer, "no request within {HANDSHAKE_TIMEOUT:?}"),
        }
    }
    http(proxy, accepted, stream, peer, protocols).await;
}

/// Whether the client's first bytes are HTTP/2's preface, read without taking them: as soon as
/// one byte differs it is HTTP/1.1 (whose methods never start with `PRI *`).
async fn opens_with_preface(stream: &TcpStream) -> io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        stream.readable().await?;
        let n = match stream.peek(&mut buf).await {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        };
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface is in: wait a moment for the rest rather than spin on it.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Serves HTTP (1.1 or 2, as `accepted` says) on `stream` until the connection ends.
async fn http<S>(
    proxy: Arc<ProxyState>,
    accepted: downstream::Accepted,
    stream: S,
    peer: SocketAddr,
    protocols: Protocols,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let downstream_conn = accepted.conn.clone();
    let worker = accepted.worker;
    let multiplexed = accepted.multiplexed;
    let service = {
        let downstream_conn = downstream_conn.clone();
        service_fn(move |req| {
            let active = downstream_conn.begin();
            let response = forward::handle(proxy.clone(), accepted.clone(), req);
            let downstream_conn = downstream_conn.clone();
            async move {
                response
                    .await
                    .map(|r| downstream_conn.answer(r, active, multiplexed))
            }
        })
    };
    let io = TokioIo::new(Watched {
        io: stream,
        conn: downstream_conn.clone(),
    });
    let ended = if multiplexed {
        let conn = std::pin::pin!(protocols.http2.serve_connection(io, service));
        downstream_conn
            .serve(worker, conn, true, |conn| conn.as_mut().graceful_shutdown())
            .await
            .map(|r| r.map_err(|e| e.to_string()))
    } else {
        let conn = std::pin::pin!(protocols
            .http1
            .serve_connection(io, service)
            .with_upgrades());
        downstream_conn
            .serve(worker, conn, false, |conn| {
                conn.as_mut().graceful_shutdown()
            })
            .await
            .map(|r| r.map_err(|e| e.to_string()))
    };
    if let Some(Err(err)) = ended {
        tracing::debug!(%peer, "client connection ended: {err}");
    }
}

/// A client's socket that notes, for `send_timeout`, when a write finds it full and when one
/// goes out (`pace::SendState`): nothing else, so the hot path pays two relaxed atomics a write.
struct Watched<S> {
    io: S,
    conn: Arc<downstream::Conn>,
}

impl<S> Watched<S> {
    fn noted(&self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &written {
            Poll::Ready(Ok(n)) => self.conn.send.wrote(*n),
            Poll::Pending => self.conn.send.full(),
            Poll::Ready(Err(_)) => {}
        }
        written
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.noted(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.noted(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
