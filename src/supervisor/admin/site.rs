//! What every admin handler reads ([`Site`]) and the shape of what it answers ([`Body`],
//! [`Handler`]); a stand-in with the `metrics` branch's interface until it lands.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

use crate::supervisor::apps::Apps;

/// The body of every admin answer.
pub type Body = BoxBody<Bytes, Infallible>;

/// One path's handler.
pub type Handler = fn(Arc<Site>, Request<()>) -> BoxFuture<'static, Response<Body>>;

/// What the admin handlers read.
#[derive(Debug)]
pub struct Site {
    pub apps: Apps,
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
