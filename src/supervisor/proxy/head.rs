//! HTTP/1.1 heads on the instance side: the request head the proxy sends (the client's headers
//! with the proxy's forwarding headers written in) and the response head it reads back, with
//! what the proxy needs of it besides the headers: the framing (`framing`), whether the
//! connection can be reused, how long the instance keeps it open, and the request id it echoes.

use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::framing::{framing, invalid, Framing};

const MAX_HEADERS: usize = 100;

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// What the proxy adds to a request on its way to an instance. It is written as the head is
/// encoded, never inserted into the header map (whose custom names hash byte by byte).
#[derive(Debug)]
pub(super) struct Forwarding<'a> {
    /// The client's address, appended to `X-Forwarded-For`.
    pub client_ip: &'a HeaderValue,
    /// The request's id, for `X-Request-Id`.
    pub request_id: &'a HeaderValue,
    /// The request carries that id already; else an `X-Request-Id` it has is replaced.
    pub id_from_client: bool,
    /// The client's connection is TLS: `X-Forwarded-Proto: https`.
    pub https: bool,
}

/// The request head as sent to the instance: the client's headers (`Content-Length` out for a
/// chunked body), `X-Forwarded-For` with the client appended, `X-Forwarded-Proto` and
/// `X-Forwarded-Host` unless a proxy in front set them, and the request id.
pub(super) fn encode_request(
    parts: &http::request::Parts,
    chunked: bool,
    forwarding: &Forwarding,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut line = |name: &[u8], value: &[u8]| write_field(&mut head, name, value);
    let mut forwarded_for = None;
    let (mut has_proto, mut has_host) = (false, false);
    let mut host = None;
    for (name, value) in &parts.headers {
        if forwarding_alias(name) {
            continue;
        }
        if *name == X_FORWARDED_FOR {
            forwarded_for = Some(value);
            continue;
        }
        if (chunked && name == header::CONTENT_LENGTH)
            || (*name == X_REQUEST_ID && !forwarding.id_from_client)
        {
            continue;
        }
        has_proto |= *name == X_FORWARDED_PROTO;
        has_host |= *name == X_FORWARDED_HOST;
        if name == header::HOST {
            host = Some(value);
        }
        line(name.as_str().as_bytes(), value.as_bytes());
    }
    match forwarded_for {
        Some(earlier) => {
            let mut both = earlier.as_bytes().to_vec();
            both.extend_from_slice(b", ");
            both.extend_from_slice(forwarding.client_ip.as_bytes());
            line(X_FORWARDED_FOR.as_str().as_bytes(), &both);
        }
        None => line(
            X_FORWARDED_FOR.as_str().as_bytes(),
            forwarding.client_ip.as_bytes(),
        ),
    }
    if !has_proto {
        let proto: &[u8] = if forwarding.https { b"https" } else { b"http" };
        line(X_FORWARDED_PROTO.as_str().as_bytes(), proto);
    }
    if let Some(host) = host.filter(|_| !has_host) {
        line(X_FORWARDED_HOST.as_str().as_bytes(), host.as_bytes());
    }
    if !forwarding.id_from_client {
        line(
            X_REQUEST_ID.as_str().as_bytes(),
            forwarding.request_id.as_bytes(),
        );
    }
    if chunked {
        line(b"transfer-encoding", b"chunked");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Whether a header is an underscore spelling of one the proxy vouches for (`X_Forwarded_For`):
/// apps that read headers through CGI-style names (`HTTP_X_FORWARDED_FOR`) cannot tell the two
/// apart, so a client could pass off its own as the proxy's. (nginx drops every underscore name.)
pub(super) fn forwarding_alias(name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    if !name.contains(&b'_') {
        return false;
    }
    [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_REQUEST_ID,
        &X_REAL_IP,
        &header::FORWARDED,
    ]
    .iter()
    .any(|vouched| {
        let vouched = vouched.as_str().as_bytes();
        vouched.len() == name.len()
            && vouched
                .iter()
                .zip(name)
                .all(|(&v, &n)| v == n || (v == b'-' && n == b'_'))
    })
}

/// A response head from an instance, and how its body is framed.
#[derive(Debug)]
pub(super) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection can carry another request once the body has been read to its end.
    pub keep_alive: bool,
    /// How long the instance keeps an idle connection open, if it says (`Keep-Alive: timeout=`).
    pub idle_hint: Option<Duration>,
    /// The `X-Request-Id` the response carries, if any: an instance that echoes the id of the
    /// request it answers lets the proxy see an answer that belongs to another request.
    pub request_id: Option<HeaderValue>,
}

/// Parses a complete head at the start of `buf` (skipping 1xx other than 101) and removes it;
/// `None` while it is incomplete.
pub(super) fn parse_response(buf: &mut BytesMut, method: &Method) -> io::Result<Option<Head>> {
    loop {
        // Left uninitialised: zeroing 100 slots on every response showed in profiles.
        let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(err) => return Err(invalid(&format!("invalid response head: {err}"))),
        };
        let code = response.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| invalid("invalid status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            let _ = buf.split_to(len);
            continue;
        }
        let http11 = response.version == Some(1);
        // Offsets into the head, so that it is parsed once and its values become slices of its
        // own bytes, not copies.
        let base = buf.as_ptr() as usize;
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let count = response.headers.len();
        for (span, h) in spans.iter_mut().zip(response.headers.iter()) {
            // The buffer never grows much past MAX_HEAD before a head parses: offsets fit.
            *span = (
                (h.name.as_ptr() as usize - base) as u32,
                h.name.len() as u32,
                (h.value.as_ptr() as usize - base) as u32,
                h.value.len() as u32,
            );
        }
        let raw = buf.split_to(len).freeze();
        // Room for what the proxy adds (the request id, a canary's cookie) without regrowing.
        let mut headers = HeaderMap::with_capacity(count + 2);
        let (mut idle_hint, mut request_id) = (None, None);
        for &(name_at, name_len, value_at, value_len) in &spans[..count] {
            let (name_at, name_len) = (name_at as usize, name_len as usize);
            let (value_at, value_len) = (value_at as usize, value_len as usize);
            let name = &raw[name_at..name_at + name_len];
            let value = HeaderValue::from_maybe_shared(raw.slice(value_at..value_at + value_len))
                .map_err(|_| invalid("invalid header value"))?;
            // Two custom names the proxy reads, noticed here rather than looked up in the map
            // (whose custom names hash byte by byte).
            if name.eq_ignore_ascii_case(b"keep-alive") {
                idle_hint = idle_hint.or(keep_alive_timeout(&value));
            } else if name.eq_ignore_ascii_case(X_REQUEST_ID.as_str().as_bytes()) {
                request_id.get_or_insert_with(|| value.clone());
            }
            let name = HeaderName::from_bytes(name).map_err(|_| invalid("invalid header name"))?;
            headers.append(name, value);
        }
        let (framing, trusted) = framing(method, status, &headers)?;
        let keep_alive = trusted
            && framing != Framing::Close
            && status != StatusCode::SWITCHING_PROTOCOLS
            && if http11 {
                !has_token(&headers, &header::CONNECTION, "close")
            } else {
                has_token(&headers, &header::CONNECTION, "keep-alive")
            };
        return Ok(Some(Head {
            status,
            headers,
            framing,
            keep_alive,
            idle_hint,
            request_id,
        }));
    }
}

/// Appends one `name: value` line to a head or a trailer block.
pub(super) fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a `name` header lists `token` (comma-separated, any case).
pub(super) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `timeout=` of a `Keep-Alive` header (whole seconds, RFC 2068 section 19.7.1.1).
fn keep_alive_timeout(value: &HeaderValue) -> Option<Duration> {
    value
        .to_str()
        .ok()?
        .split(',')
        .filter_map(|param| param.split_once('='))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case("timeout"))
        .and_then(|(_, secs)| secs.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(req: http::Request<()>, id_from_client: bool) -> String {
        let (parts, ()) = req.into_parts();
        let forwarding = Forwarding {
            client_ip: &HeaderValue::from_static("127.0.0.1"),
            request_id: &HeaderValue::from_static("00ab"),
            id_from_client,
            https: false,
        };
        String::from_utf8(encode_request(&parts, false, &forwarding)).unwrap()
    }

    #[test]
    fn underscore_spellings_of_the_forwarding_headers_are_left_out() {
        let req = http::Request::get("/")
            .header("host", "shop.example")
            .header("x_forwarded_for", "6.6.6.6")
            .header("X-Forwarded_Proto", "https")
            .header("x_request_id", "forged")
            .header("x_custom_thing", "kept")
            .body(())
            .unwrap();
        let head = encoded(req, false);
        assert!(
            !head.contains("6.6.6.6") && !head.contains("forged"),
            "{head}"
        );
        assert!(!head.contains("https"), "{head}");
        assert!(head.contains("x_custom_thing: kept\r\n"), "{head}");
        assert!(head.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");
    }

    #[test]
    fn the_proxy_s_headers_are_added_once_and_the_client_appended() {
        let req = http::Request::get("/a?b=1")
            .header("host", "shop.example")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-request-id", "")
            .body(())
            .unwrap();
        assert_eq!(
            encoded(req, false),
            "GET /a?b=1 HTTP/1.1\r\nhost: shop.example\r\n\
             x-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: shop.example\r\nx-request-id: 00ab\r\n\r\n"
        );
        // What a proxy in front set stays; the client's id is kept as it is.
        let req = http::Request::get("/")
            .header("host", "shop.example")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "www.example")
            .header("x-request-id", "lb-1")
            .body(())
            .unwrap();
        assert_eq!(
            encoded(req, true),
            "GET / HTTP/1.1\r\nhost: shop.example\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: www.example\r\nx-request-id: lb-1\r\n\
             x-forwarded-for: 127.0.0.1\r\n\r\n"
        );
    }

    fn parse(text: &str, method: Method) -> (Option<Head>, usize) {
        let mut buf = BytesMut::from(text.as_bytes());
        let head = parse_response(&mut buf, &method).unwrap();
        (head, buf.len())
    }

    #[test]
    fn heads_are_parsed_and_framed() {
        let (head, left) = parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
            Method::GET,
        );
        let head = head.unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert_eq!(head.headers["x-a"], "1");
        assert_eq!(left, 5, "the body stays in the buffer");

        let (head, _) = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            Method::POST,
        );
        assert_eq!(head.unwrap().framing, Framing::Chunked);

        let (head, _) = parse("HTTP/1.0 200 OK\r\n\r\n", Method::GET);
        let head = head.unwrap();
        assert_eq!(head.framing, Framing::Close);
        assert!(!head.keep_alive);

        let (head, _) = parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\n",
            Method::HEAD,
        );
        let head = head.unwrap();
        assert_eq!(head.framing, Framing::Empty);
        assert!(!head.keep_alive);

        assert!(parse("HTTP/1.1 200 OK\r\ncontent-le", Method::GET)
            .0
            .is_none());
    }
}
