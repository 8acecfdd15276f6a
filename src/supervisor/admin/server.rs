//! The admin address's listener: binds it ([`bind`]), serves it until told to stop ([`serve`]),
//! answers GET and HEAD through [`super::routes`], 405 for other methods, 404 for unknown paths.
//!
//! Each connection is its own task with hyper's HTTP/1.1 server; the accept loop waits on the
//! socket and on the stop token only, so an idle supervisor runs nothing for it. The listener
//! itself stays with the caller (a copy serves here), because it is handed to the next
//! supervisor and must outlive one `serve`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::routes;
use super::site::{text, Body, Site};

/// How long a client may take to send a request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the backlog (a scraper or two and a few browsers
/// are what this address is for).
const MAX_CONNECTIONS: usize = 64;

/// Binds the admin address; the error says which address and what to do.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, std::io::Error> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot listen on the admin address {addr} (--metrics-listen): {e}; free it or pick another"
            ),
        )
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `listener` (a copy of it: the caller keeps the socket) with `site` until `stop` is
/// cancelled; connections already accepted are served to their end.
pub async fn serve(listener: &std::net::TcpListener, site: Arc<Site>, stop: CancellationToken) {
    let listener = match listener
        .try_clone()
        .and_then(|copy| copy.set_nonblocking(true).map(|()| copy))
        .and_then(tokio::net::TcpListener::from_std)
    {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("cannot serve the admin address {}: {e}", site.addr);
            return;
        }
    };
    let room = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = room.clone().acquire_owned() => permit,
            () = stop.cancelled() => return,
        };
        let Ok(permit) = permit else { return };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, most likely: the next accept may work once one closes.
                    tracing::warn!("admin address {}: accept failed: {e}", site.addr);
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            },
            () = stop.cancelled() => return,
        };
        let site = site.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let site = site.clone();
                async move { Ok::<_, Infallible>(answer(site, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            // Not cut when serving stops: a request accepted just before (a hand-over) is
            // answered rather than refused; the process's exit ends what is left.
            let _ = connection.await;
            drop(permit);
        });
    }
}

/// One request: GET and HEAD go to their route (404 without one), anything else gets 405.
async fn answer(site: Arc<Site>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("405 method not allowed: the admin address answers GET and HEAD, not {method}"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let (parts, _) = request.into_parts();
    let request = Request::from_parts(parts, ());
    let path = request.uri().path().to_owned();
    let response = match routes::find(&path) {
        Some(handler) => handler(site, request).await,
        None => text(
            StatusCode::NOT_FOUND,
            format!("404 not found: {path} is no page of this admin address (try /metrics)"),
        ),
    };
    if method == Method::HEAD {
        return without_body(response);
    }
    response
}

/// The head of `response` alone, with the length its body would have had when known.
fn without_body(response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    if let Some(len) = body.size_hint().exact() {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Response::from_parts(parts, Empty::new().boxed())
}
