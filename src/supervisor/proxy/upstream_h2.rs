//! HTTP/2 to one instance (an app's `upstream: h2c`, or `h2` over TLS, for gRPC and other apps
//! that speak HTTP/2 only): one multiplexed connection per instance and worker, made on first
//! use and again once it closed; hyper's client drives it in the worker's runtime. Over TLS the
//! connection is made only once the instance's certificate was verified and it chose `h2`.

use std::net::SocketAddr;
use std::sync::Mutex;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::paced_body::PacedBody;
use crate::supervisor::upstream_tls::UpstreamTls;

/// One worker's connection to one instance, when one is open.
#[derive(Debug, Default)]
pub(crate) struct H2Conn(Mutex<Option<http2::SendRequest<PacedBody>>>);

/// Why a request got no answer over HTTP/2.
#[derive(Debug)]
pub(crate) enum H2Error {
    /// Nothing of it was sent (no connection could be made, or it closed first): here it is
    /// back, to go to another instance.
    NotSent(String, Box<Request<PacedBody>>),
    /// It was sent, and the exchange broke.
    Exchange(String),
}

impl H2Conn {
    /// Sends `req` on the connection to `addr` (made now if there is none, over TLS with `tls`)
    /// and waits for the answer's head; the body streams as the client takes it.
    pub async fn send(
        &self,
        addr: SocketAddr,
        tls: Option<&UpstreamTls>,
        req: Request<PacedBody>,
    ) -> Result<Response<Incoming>, H2Error> {
        let mut sender = match self.open() {
            Some(sender) => sender,
            None => match connect(addr, tls).await {
                Ok(sender) => {
                    *lock(&self.0) = Some(sender.clone());
                    sender
                }
                Err(err) => return Err(H2Error::NotSent(err, Box::new(req))),
            },
        };
        if let Err(err) = sender.ready().await {
            lock(&self.0).take();
            return Err(H2Error::NotSent(err.to_string(), Box::new(req)));
        }
        sender.try_send_request(req).await.map_err(|mut err| {
            let why = err.error().to_string();
            match err.take_message() {
                Some(req) => {
                    lock(&self.0).take();
                    H2Error::NotSent(why, Box::new(req))
                }
                None => H2Error::Exchange(why),
            }
        })
    }

    fn open(&self) -> Option<http2::SendRequest<PacedBody>> {
        let mut conn = lock(&self.0);
        if conn.as_ref().is_some_and(|c| c.is_closed()) {
            *conn = None;
        }
        conn.clone()
    }
}

async fn connect(
    addr: SocketAddr,
    tls: Option<&UpstreamTls>,
) -> Result<http2::SendRequest<PacedBody>, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    match tls {
        Some(tls) => handshake(tls.connect(stream, addr).await?, addr).await,
        None => handshake(stream, addr).await,
    }
}

/// HTTP/2's handshake over `io`, the connection then driven by a task of its own.
async fn handshake<T>(io: T, addr: SocketAddr) -> Result<http2::SendRequest<PacedBody>, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            tracing::debug!("HTTP/2 connection to {addr} ended: {err}");
        }
    });
    Ok(sender)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
