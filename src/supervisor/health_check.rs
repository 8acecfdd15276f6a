//! One health check's exchange with an instance: a TCP connect, or a GET spoken as the app's
//! [`Wire`] says (HTTP/1.1, h2c, or HTTP/2 over TLS with the trust of `upstream_tls`), and
//! whether a failure is the instance's or the supervisor's own.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::supervisor::upstream_tls::Wire;

/// Why a check did not pass.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The instance's: the reason shown to operators ("GET /healthz → 500").
    Instance(String),
    /// The supervisor's own: it could not even try.
    Local(String),
}

impl From<String> for Failure {
    fn from(reason: String) -> Self {
        Failure::Instance(reason)
    }
}

pub(crate) async fn connect(addr: SocketAddr) -> Result<TcpStream, Failure> {
    TcpStream::connect(addr)
        .await
        .map_err(|err| connect_failure(addr, &err))
}

fn connect_failure(addr: SocketAddr, err: &std::io::Error) -> Failure {
    use nix::errno::Errno;
    let local = [
        Errno::EMFILE,
        Errno::ENFILE,
        Errno::ENOBUFS,
        Errno::ENOMEM,
        Errno::EADDRNOTAVAIL,
    ];
    match err.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            Failure::Instance(format!("connect to {addr} refused"))
        }
        _ if err
            .raw_os_error()
            .is_some_and(|code| local.contains(&Errno::from_raw(code))) =>
        {
            Failure::Local(format!("cannot connect to {addr}: {err}"))
        }
        _ => Failure::Instance(format!("connect to {addr} failed: {err}")),
    }
}

/// GET `path` from the instance at `addr`, spoken as `wire` says (an error: the wire could not be
/// set up, and every check fails with it); 2xx and 3xx pass.
pub(crate) async fn http_get(
    addr: SocketAddr,
    path: &str,
    wire: &Result<Wire, String>,
) -> Result<(), Failure> {
    let wire = wire
        .as_ref()
        .map_err(|why| Failure::Instance(why.clone()))?;
    let stream = connect(addr).await?;
    let request = http::Request::get(format!("http://{addr}{path}"))
        .header(http::header::USER_AGENT, "cutover-health")
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("GET {path}: invalid path: {err}"))?;
    // The connection is driven here and dropped with the check: one connection per check, so
    // a check also proves the app still accepts connections (and, over TLS, still holds a
    // certificate the app's trust accepts).
    let outcome = match wire {
        Wire::H2c => h2_get(TokioIo::new(stream), path, request).await?,
        Wire::H2(tls) => {
            let stream = tls
                .connect(stream, addr)
                .await
                .map_err(|why| format!("GET {path} (HTTP/2 over TLS): {why}"))?;
            let request = with_scheme(request, addr, path)?;
            h2_get(TokioIo::new(stream), path, request).await?
        }
        Wire::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|err| format!("GET {path}: {err}"))?;
            let driver = tokio::spawn(conn);
            let (mut parts, body) = request.into_parts();
            // Origin-form with a Host, as HTTP/1.1 servers expect.
            parts.uri = path
                .parse()
                .map_err(|err| format!("GET {path}: invalid path: {err}"))?;
            parts.headers.insert(
                http::header::HOST,
                http::HeaderValue::from_str(&addr.to_string()).map_err(|e| e.to_string())?,
            );
            let outcome = sender
                .send_request(http::Request::from_parts(parts, body))
                .await;
            driver.abort();
            outcome
        }
    };
    let response = outcome.map_err(|err| format!("GET {path}: {err}"))?;
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("GET {path} → {}", status.as_u16()).into())
    }
}

/// The request as sent over TLS: `https` in its `:scheme`.
fn with_scheme(
    request: http::Request<Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> Result<http::Request<Empty<Bytes>>, Failure> {
    let (mut parts, body) = request.into_parts();
    parts.uri = format!("https://{addr}{path}")
        .parse()
        .map_err(|err| format!("GET {path}: invalid path: {err}"))?;
    Ok(http::Request::from_parts(parts, body))
}

/// The GET over a fresh HTTP/2 connection on `io`.
async fn h2_get<T>(
    io: TokioIo<T>,
    path: &str,
    request: http::Request<Empty<Bytes>>,
) -> Result<hyper::Result<http::Response<Incoming>>, Failure>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(|err| format!("GET {path} (HTTP/2): {err}"))?;
    let driver = tokio::spawn(conn);
    let outcome = sender.send_request(request).await;
    driver.abort();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_the_supervisor_could_not_try_is_not_the_instances_failure() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EADDRNOTAVAIL,
        ] {
            let err = std::io::Error::from_raw_os_error(errno);
            assert!(
                matches!(connect_failure(addr, &err), Failure::Local(_)),
                "{err}"
            );
        }
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(
            connect_failure(addr, &refused),
            Failure::Instance("connect to 127.0.0.1:8080 refused".into())
        );
        let unreachable = std::io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert!(matches!(
            connect_failure(addr, &unreachable),
            Failure::Instance(_)
        ));
    }
}
