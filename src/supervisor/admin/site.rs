//! What every admin handler reads ([`Site`]: the apps, the supervisor's event counters, when it
//! started) and the shape of what it answers ([`Body`], [`Handler`], and the plain answers).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

use crate::supervisor::apps::Apps;
use crate::supervisor::events::Events;

/// The body of every admin answer: whole (`full`) or streamed (server-sent events), never
/// failing once begun.
pub type Body = BoxBody<Bytes, Infallible>;

/// One path's handler. Requests reach it as GET or HEAD only (the server refuses the rest and
/// drops the body of a HEAD answer), without a body.
pub type Handler = fn(Arc<Site>, Request<()>) -> BoxFuture<'static, Response<Body>>;

/// What the admin handlers read: everything is looked up when asked, nothing is sampled.
#[derive(Debug)]
pub struct Site {
    /// The apps of the supervisor serving now.
    pub apps: Apps,
    /// Deploys, canary steps, rollbacks and hand-overs as they happened.
    pub events: Arc<Events>,
    /// When this supervisor process started (`process_start_time_seconds`).
    pub started: SystemTime,
    /// The admin address itself.
    pub addr: SocketAddr,
}

/// A whole answer of `content_type`.
pub fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// A plain-text answer, one line.
pub fn text(status: StatusCode, line: String) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", line + "\n")
}
