//! HTTP/1.1 heads on the instance side: the request head the proxy sends (the client's headers
//! with the proxy's forwarding headers written in) and the response head it reads back (with how
//! its body is framed, RFC 9112 section 6.3), and the trailer fields that may end a chunked body.

use std::io;
use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::client::invalid;

const MAX_HEADERS: usize = 100;
/// A chunked body with more trailer fields than this is refused.
const MAX_TRAILERS: usize = 64;
/// A trailer block longer than this is refused.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
        line(X_FORWARDED_PROTO.as_str().as_bytes(), b"http");
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

/// A response head from an instance, and how its body is framed.
#[derive(Debug)]
pub(super) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection can carry another request once the body has been read to its end.
    pub keep_alive: bool,
}

/// How a response body ends (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the instance closes the connection.
    Close,
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
        for &(name_at, name_len, value_at, value_len) in &spans[..count] {
            let (name_at, name_len) = (name_at as usize, name_len as usize);
            let (value_at, value_len) = (value_at as usize, value_len as usize);
            let name = HeaderName::from_bytes(&raw[name_at..name_at + name_len])
                .map_err(|_| invalid("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(raw.slice(value_at..value_at + value_len))
                .map_err(|_| invalid("invalid header value"))?;
            headers.append(name, value);
        }
        let framing = framing(method, status, &headers)?;
        let keep_alive = framing != Framing::Close
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

/// Parses the trailer block after a chunked body's last chunk (fields, then an empty line) at
/// the start of `buf` and removes it; `None` while it is incomplete.
pub(super) fn parse_trailers(buf: &mut BytesMut) -> io::Result<Option<HeaderMap>> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(parsed)) => parsed,
        Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILER_BYTES => {
            return Err(invalid("trailer fields too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(invalid(&format!("invalid trailer fields: {err}"))),
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| invalid("invalid trailer name"))?;
        let value =
            HeaderValue::from_bytes(field.value).map_err(|_| invalid("invalid trailer value"))?;
        trailers.append(name, value);
    }
    let _ = buf.split_to(len);
    Ok(Some(trailers))
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

fn framing(method: &Method, status: StatusCode, headers: &HeaderMap) -> io::Result<Framing> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if let Some(encodings) = headers.get(header::TRANSFER_ENCODING) {
        let last = encodings
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        return Ok(match last {
            Some(e) if e.eq_ignore_ascii_case("chunked") => Framing::Chunked,
            _ => Framing::Close,
        });
    }
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(Framing::Close),
        Some(len) => {
            let len: u64 = len
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| invalid("invalid content-length"))?;
            Ok(if len == 0 {
                Framing::Empty
            } else {
                Framing::Length(len)
            })
        }
    }
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
        };
        String::from_utf8(encode_request(&parts, false, &forwarding)).unwrap()
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
