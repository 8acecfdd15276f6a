//! Setting up what the CA checks, and taking it down again: HTTP-01 tokens and TLS-ALPN-01
//! certificates (made here with rcgen, carrying the acmeIdentifier extension of RFC 8737) go
//! into the proxy's process-wide table, which every address answers from; and the
//! challenge-only HTTP port, opened when no proxy serves `http_listen` (404 for anything else)
//! and given up to an app deployed on that address meanwhile (its proxy answers from the table
//! too), the socket passed on open so that no connection is refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::supervisor::proxy::challenges;

/// One challenge in the table, taken out again on drop.
#[derive(Debug)]
pub enum Posted {
    Http(String),
    Alpn(String),
}

impl Posted {
    /// Answers `token` with `key_authorization` over HTTP-01.
    pub fn http(token: &str, key_authorization: &str) -> Posted {
        challenges().add_http(token, key_authorization);
        Posted::Http(token.to_owned())
    }

    /// Serves the TLS-ALPN-01 certificate for `name`, made for the key authorization's digest.
    pub fn alpn(name: &str, digest: &[u8]) -> Result<Posted, String> {
        challenges().add_alpn(name, alpn_cert(name, digest)?);
        Ok(Posted::Alpn(name.to_owned()))
    }
}

impl Drop for Posted {
    fn drop(&mut self) {
        match self {
            Posted::Http(token) => challenges().remove_http(token),
            Posted::Alpn(name) => challenges().remove_alpn(name),
        }
    }
}

/// A self-signed certificate for `name` with the acmeIdentifier extension (RFC 8737 section 3).
fn alpn_cert(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| format!("{name}: {e}"))?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its check that key and certificate match parses the
    // certificate with webpki, which refuses the critical acmeIdentifier extension.
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// The challenge-only HTTP ports open now, by address, shared by the orders that need them.
#[derive(Debug, Default)]
pub struct Ports {
    open: Mutex<HashMap<SocketAddr, Weak<Port>>>,
}

/// One challenge-only port, closed when the last order holding it lets go.
#[derive(Debug)]
pub struct Port {
    stop: CancellationToken,
    /// The socket, for an app's proxy to take over.
    listener: std::net::TcpListener,
}

impl Drop for Port {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Ports {
    /// A hold on a port answering HTTP-01 at `addr`: the one open, else a new one; `None` when
    /// the address is taken (by an app's proxy, which answers challenges too).
    pub fn hold(&self, addr: SocketAddr) -> Result<Option<Arc<Port>>, String> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(port) = open.get(&addr).and_then(Weak::upgrade) {
            return Ok(Some(port));
        }
        let listener = match std::net::TcpListener::bind(addr) {
            Ok(listener) => listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "cannot listen on {addr} for HTTP-01 challenges: {e}; set tls.acme.http_listen or use tls-alpn-01"
                ))
            }
        };
        let kept = listener.try_clone();
        listener
            .set_nonblocking(true)
            .and_then(|()| Ok((kept?, tokio::net::TcpListener::from_std(listener)?)))
            .map_err(|e| format!("cannot serve {addr} for HTTP-01 challenges: {e}"))
            .map(|(kept, listener)| {
                let port = Arc::new(Port {
                    stop: CancellationToken::new(),
                    listener: kept,
                });
                tokio::spawn(serve(listener, port.stop.clone()));
                open.insert(addr, Arc::downgrade(&port));
                tracing::info!("answering HTTP-01 challenges on {addr}");
                Some(port)
            })
    }
}

impl Ports {
    /// The socket of the challenge-only port open at `addr`, if one is, for an app's proxy to
    /// serve from now on: this port stops accepting (connections it took are answered still).
    pub fn take(&self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let port = open.remove(&addr)?.upgrade()?;
        port.stop.cancel();
        match port.listener.try_clone() {
            Ok(listener) => {
                tracing::info!("the challenge-only port {addr} goes to the app deployed there");
                Some(listener)
            }
            Err(e) => {
                tracing::error!("cannot pass the challenge-only port {addr} on: {e}");
                None
            }
        }
    }
}

/// Answers challenges on `listener` until `stop`, 404 to anything else.
async fn serve(listener: tokio::net::TcpListener, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let answer = challenges().http_answer(req.uri().path());
                let response = match answer {
                    Some(answer) => Response::new(Full::new(Bytes::from(answer))),
                    None => {
                        let mut response = Response::new(Full::new(Bytes::from_static(
                            b"404 not found: this port only answers ACME challenges\n",
                        )));
                        *response.status_mut() = StatusCode::NOT_FOUND;
                        response
                    }
                };
                Ok::<_, std::convert::Infallible>(response)
            });
            let builder = hyper::server::conn::http1::Builder::new();
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
}
