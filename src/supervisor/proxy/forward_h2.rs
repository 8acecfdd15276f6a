//! One HTTP request sent on to an instance over HTTP/2 (an app's `upstream: h2c` or `h2`): the same
//! pick, canary sides and hold as over HTTP/1.1, the forwarding headers set in the request's own
//! fields, and the answer streamed back with its trailers (gRPC's status travels in them).
//!
//! A request is sent to another instance only when nothing of it left the proxy (no connection,
//! or one that closed before it took the request); one that broke after is answered 502, unless
//! the client's body was at fault (`paced_body`: it stopped coming, or broke): 408 or 400, and
//! not the instance's error.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::access_entry::Entry;
use super::body::{grpc_as_http, grpc_status, ResponseBody, Streamed};
use super::downstream::Accepted;
use super::head::{
    forwarding_alias, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use super::paced_body::{BodyFailure, PacedBody};
use super::request::{self, strip_hop_by_hop, RequestId};
use super::route::{next_backend, sides, Hold, InFlight, Routed, Side, Table};
use super::site::SiteState;
use super::upstream_h2::H2Error;

/// How the request was split and what goes back with its answer.
pub(super) struct Choice {
    pub side: Side,
    pub routed: Routed,
    pub cookie: Option<HeaderValue>,
}

/// Sends `req` to an instance of `site`'s route (`table`, waiting within `hold` for one if none
/// takes it) and answers with the instance's response.
pub(super) async fn send(
    site: &SiteState,
    accepted: &Accepted,
    mut req: Request<Incoming>,
    id: &RequestId,
    entry: &mut Option<Box<Entry>>,
    (mut table, mut hold): (Arc<Table>, Hold),
    choice: Choice,
) -> Response<ResponseBody> {
    request::prepare(&mut req, false);
    forwarding(&mut req, accepted, id);
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|host| host.to_str().ok().map(str::to_owned))
        .unwrap_or_else(|| "localhost".to_owned());
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    // Over TLS (`upstream: h2`), with the trust loaded once for the request.
    let tls = site.upstream_tls.load_full();
    *req.uri_mut() = Uri::builder()
        .scheme(if tls.is_some() { "https" } else { "http" })
        .authority(authority.as_str())
        .path_and_query(target.as_str())
        .build()
        .unwrap_or_else(|_| Uri::from_static("http://localhost/"));
    *req.version_mut() = Version::HTTP_2;
    let failure = BodyFailure::default();
    let pace = accepted.conn.limits.body();
    let mut req = req.map(|body| PacedBody::new(body, pace, failure.clone()));
    let lane = site.lane(accepted.worker);
    let worker = accepted.worker;
    loop {
        let [first, second] = sides(&table, choice.side);
        let mut tried = 0u64;
        while let Some(index) = next_backend(&table, lane, [&first, &second], &mut tried) {
            let state = &table.backends[index];
            let slot = table.slot_of(index);
            if let Some(entry) = entry {
                entry.picked(&table, index);
            }
            let in_flight = InFlight::new(table.clone(), index, worker);
            let started = Instant::now();
            match state
                .h2(worker)
                .send(state.backend.addr, tls.as_deref(), req)
                .await
            {
                Ok(response) => {
                    let latency = started.elapsed();
                    let (mut parts, body) = response.into_parts();
                    let grpc = is_grpc(&parts.headers);
                    let status = match grpc_status(&parts.headers) {
                        Some(status) if grpc => Some(grpc_as_http(status)),
                        _ if grpc => None,
                        _ => Some(parts.status.as_u16()),
                    };
                    if let Some(status) = status {
                        state.record(worker, choice.routed, slot, status, latency);
                    }
                    strip_hop_by_hop(&mut parts.headers);
                    if let Some(cookie) = choice.cookie {
                        parts.headers.append(header::SET_COOKIE, cookie);
                    }
                    let pending = status.is_none().then_some((choice.routed, latency));
                    let body = Streamed::body(body, (in_flight, slot), worker, pending);
                    return Response::from_parts(parts, body);
                }
                Err(H2Error::NotSent(why, back)) => {
                    state.record_failed_connect(worker, slot);
                    tracing::debug!(backend = %state.backend.id, "not sent, trying another: {why}");
                    req = *back;
                }
                Err(H2Error::Exchange(why)) => {
                    if let Some(kind) = failure.get() {
                        tracing::debug!(backend = %state.backend.id, "the client's body failed: {why}");
                        return client_failed(*kind);
                    }
                    state.record_broken(worker, choice.routed, slot);
                    tracing::debug!(backend = %state.backend.id, "HTTP/2 exchange failed: {why}");
                    return status(
                        StatusCode::BAD_GATEWAY,
                        "502 bad gateway: the instance broke the HTTP/2 stream before answering\n",
                    );
                }
            }
        }
        match site.rerouted(worker, &table, &mut hold).await {
            Some(routed) => table = routed,
            None => {
                return status(
                    StatusCode::BAD_GATEWAY,
                    "502 bad gateway: no instance of this app accepted the connection\n",
                )
            }
        }
    }
}

/// `X-Forwarded-For` (the client appended), `-Proto` and `-Host` unless a proxy in front set
/// them, and the request id, as `head::encode_request` writes them for HTTP/1.1.
fn forwarding(req: &mut Request<Incoming>, accepted: &Accepted, id: &RequestId) {
    let host = req.headers().get(header::HOST).cloned();
    let headers = req.headers_mut();
    // Underscore spellings of the fields vouched for here, as for HTTP/1.1.
    let aliases: Vec<HeaderName> = headers
        .keys()
        .filter(|name| forwarding_alias(name))
        .cloned()
        .collect();
    for alias in aliases {
        headers.remove(alias);
    }
    let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
        Some(earlier) => {
            let mut both = earlier.as_bytes().to_vec();
            both.extend_from_slice(b", ");
            both.extend_from_slice(accepted.client_ip.as_bytes());
            HeaderValue::from_bytes(&both).unwrap_or_else(|_| accepted.client_ip.clone())
        }
        None => accepted.client_ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    let proto = if accepted.tls { "https" } else { "http" };
    set_unless_present(headers, &X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        set_unless_present(headers, &X_FORWARDED_HOST, host);
    }
    if !id.from_client {
        headers.insert(X_REQUEST_ID.clone(), id.value.clone());
    }
}

fn set_unless_present(headers: &mut http::HeaderMap, name: &HeaderName, value: HeaderValue) {
    if !headers.contains_key(name) {
        headers.insert(name.clone(), value);
    }
}

/// Whether an answer is gRPC's (`application/grpc`, `application/grpc+proto`, …).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
}

/// The answer to a request whose body failed on the client's side (it stopped coming:
/// `TimedOut`; or broke); the connection ends with it (the rest of the body will not be read).
pub(super) fn client_failed(kind: std::io::ErrorKind) -> Response<ResponseBody> {
    let mut response = if kind == std::io::ErrorKind::TimedOut {
        status(
            StatusCode::REQUEST_TIMEOUT,
            "408 request timeout: the request body stopped arriving\n",
        )
    } else {
        status(
            StatusCode::BAD_REQUEST,
            "400 bad request: the request body could not be read\n",
        )
    };
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn status(code: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::text(text));
    *response.status_mut() = code;
    response
}
