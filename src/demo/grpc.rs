//! The demo app's gRPC method, `/cutover.demo.Echo/Say`: it answers each request message with the
//! same bytes (gRPC's length-prefixed framing, no protobuf schema needed to echo), then
//! `grpc-status` in the trailers — 0 unless `--grpc-status` names a failure to inject.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

/// The method's path.
pub const SAY: &str = "/cutover.demo.Echo/Say";

/// Echoes the request's messages with `status` in the trailers.
pub async fn say(req: Request<Incoming>, status: u32) -> Response<BoxBody<Bytes, Infallible>> {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    if status != 0 {
        trailers.insert(
            "grpc-message",
            HeaderValue::from_static("demo failure (--grpc-status)"),
        );
    }
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = if status == 0 {
        vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))]
    } else {
        vec![Ok(Frame::trailers(trailers))]
    };
    let mut response = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
    if !grpc {
        *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}
