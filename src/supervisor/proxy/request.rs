//! What the proxy makes of a client's request before an instance sees it: the requests it refuses
//! outright (no or two `Host`, `CONNECT`), the hop-by-hop headers it removes, and the form the
//! request goes on in (origin-form, HTTP/1.1, `Host` from HTTP/2's authority), and its id
//! (`X-Request-Id`). The forwarding headers are written with the head (`head::encode_request`),
//! which also leaves out their underscore spellings.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

use super::head::{self, X_REQUEST_ID};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1): never
/// forwarded. Upgrade and Connection are put back for a WebSocket handshake, and `TE: trailers`
/// for a client that takes trailer fields (the proxy passes them on). `Trailer` is the
/// message's own and goes through.
fn hop_by_hop() -> [&'static HeaderName; 7] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHORIZATION,
    ]
}

/// A request the proxy answers itself rather than forwarding, and why.
pub(super) fn refused<B>(req: &Request<B>) -> Option<(StatusCode, &'static str)> {
    if req.method() == Method::CONNECT {
        return Some((
            StatusCode::METHOD_NOT_ALLOWED,
            "405 method not allowed: CONNECT is not proxied (an app that takes whole connections uses mode: tcp)\n",
        ));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        // RFC 9112 section 3.2: an HTTP/1.1 request without Host, or with more than one.
        (None, _) if req.version() == Version::HTTP_11 => Some((
            StatusCode::BAD_REQUEST,
            "400 bad request: an HTTP/1.1 request needs a Host header\n",
        )),
        (Some(_), Some(_)) => Some((
            StatusCode::BAD_REQUEST,
            "400 bad request: more than one Host header\n",
        )),
        _ => None,
    }
}

pub(super) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && head::has_token(headers, &header::CONNECTION, "upgrade")
}

/// Safe to send twice (RFC 9110 section 9.2.1) and without a body.
pub(super) fn is_replayable<B>(req: &Request<B>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && !req.headers().contains_key(header::TRANSFER_ENCODING)
        && req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|len| len.as_bytes() == b"0")
}

/// Makes the request one to send on: origin-form, HTTP/1.1, without the hop-by-hop headers (but
/// those of a WebSocket handshake) and without `Expect: 100-continue`, which the proxy has
/// answered itself (an instance asked again could refuse it and leave the body unread on the
/// connection). The `X-Forwarded-*` and `X-Request-Id` headers are written by `Outgoing::new`.
pub(super) fn prepare<B>(req: &mut Request<B>, upgrade: bool) {
    // HTTP/2 names the host in `:authority` only (and HTTP/1.1's absolute form may): the
    // instance reads it from `Host`.
    if !req.headers().contains_key(header::HOST) {
        let authority = req
            .uri()
            .authority()
            .map(|a| HeaderValue::from_str(a.as_str()));
        if let Some(Ok(host)) = authority {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    // Origin-form on the wire to the instance, whatever form the client used.
    if req.uri().scheme().is_some() {
        if let Some(path) = req.uri().path_and_query() {
            *req.uri_mut() = Uri::from(path.clone());
        }
    }
    *req.version_mut() = Version::HTTP_11;
    let upgrade_to = if upgrade {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    };
    let headers = req.headers_mut();
    if strip_hop_by_hop(headers) {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if headers
        .get(header::EXPECT)
        .is_some_and(|e| e.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        headers.remove(header::EXPECT);
    }
    if let Some(protocol) = upgrade_to {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes the hop-by-hop headers; true if a `TE` among them took trailers (`TE: trailers`).
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // Most messages have none: one pass over the names (cheap compares) spares the lookups.
    let hop = hop_by_hop();
    if !headers.keys().any(|name| hop.contains(&name)) {
        return false;
    }
    let takes_trailers = head::has_token(headers, &header::TE, "trailers");
    // Headers named in Connection are hop-by-hop too, but for those the message cannot do
    // without: a client must not be able to strip the Host or the framing of its request.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !end_to_end(name))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in hop {
        headers.remove(name);
    }
    takes_trailers
}

/// Headers a `Connection` line may not declare hop-by-hop: the request's routing, framing and id.
fn end_to_end(name: &HeaderName) -> bool {
    [&header::HOST, &header::CONTENT_LENGTH, &head::X_REQUEST_ID].contains(&name)
}

/// A longer incoming `X-Request-Id` is replaced by a new one rather than passed on.
const MAX_REQUEST_ID: usize = 200;

/// The request's id: the one it came with (a load balancer in front set it), else a new one.
pub(super) fn request_id(headers: &HeaderMap) -> RequestId {
    match headers.get(&X_REQUEST_ID) {
        Some(id) if !id.is_empty() && id.len() <= MAX_REQUEST_ID => RequestId {
            value: id.clone(),
            from_client: true,
        },
        _ => RequestId {
            value: new_request_id(),
            from_client: false,
        },
    }
}

/// 16 random hex digits.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random = rand::random::<u64>();
    let mut digits = [0u8; 16];
    for (i, digit) in digits.iter_mut().enumerate() {
        *digit = HEX[(random >> (60 - 4 * i)) as usize & 0xf];
    }
    HeaderValue::from_bytes(&digits).expect("hex digits are a valid header value")
}

/// The id a request goes to the instance with.
#[derive(Debug)]
pub(super) struct RequestId {
    pub value: HeaderValue,
    /// The request carries it already; else any `X-Request-Id` it has is replaced by this one.
    pub from_client: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_request_id_is_16_random_hex_digits() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_eq!(a.len(), 16);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit), "{a:?}");
        assert_ne!(a, b);
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!wants_upgrade(&headers));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(wants_upgrade(&headers));
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        headers.append(header::CONNECTION, HeaderValue::from_static("x-other"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("x-other", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn connection_cannot_strip_the_host_or_the_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("host, content-length, x-gone"),
        );
        headers.insert(header::HOST, HeaderValue::from_static("shop.example"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        headers.insert("x-gone", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "host"]);
    }

    #[test]
    fn requests_without_one_host_and_connect_are_refused() {
        let request = |method: &str, version: Version, hosts: &[&str]| {
            let mut req = Request::builder().method(method).uri("/").version(version);
            for host in hosts {
                req = req.header(header::HOST, *host);
            }
            req.body(()).unwrap()
        };
        let status = |req: Request<()>| refused(&req).map(|(status, _)| status.as_u16());
        assert_eq!(status(request("GET", Version::HTTP_11, &["a"])), None);
        assert_eq!(status(request("GET", Version::HTTP_10, &[])), None);
        assert_eq!(status(request("GET", Version::HTTP_11, &[])), Some(400));
        assert_eq!(
            status(request("GET", Version::HTTP_11, &["a", "b"])),
            Some(400)
        );
        assert_eq!(
            status(request("CONNECT", Version::HTTP_11, &["a"])),
            Some(405)
        );
    }

    #[test]
    fn expect_100_continue_is_answered_here_and_not_passed_on() {
        let mut req = Request::post("/")
            .header(header::HOST, "a")
            .header(header::EXPECT, "100-continue")
            .body(())
            .unwrap();
        prepare(&mut req, false);
        assert!(!req.headers().contains_key(header::EXPECT));
    }
}
