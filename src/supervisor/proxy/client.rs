//! The proxy's HTTP/1.1 client to its instances, run inside the client connection's own task: the
//! request head is written and the response head read on a pooled socket directly, with no
//! connection task and no channels in between (the hand-offs that made hyper's client the larger
//! half of the proxy's cost per request). The response body is read by `body::Proxied`, in the
//! same task, as the client side asks for it.
//!
//! What it speaks: origin-form requests, bodies by `content-length` or chunked, responses framed
//! by length, chunks or close (RFC 9112 section 6.3), 1xx responses skipped, 101 handed back with
//! the socket for a tunnel.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a connect to an instance may take before it counts as failed (and is retried on
/// another one). Instances are local, so a slow connect means an overloaded or wedged one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A response head larger than this is refused (hyper's default limit is about the same).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// Room made in the read buffer before each read.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// One keep-alive connection to an instance, with the bytes read past the current message.
#[derive(Debug)]
pub(super) struct Conn {
    pub io: TcpStream,
    pub buf: BytesMut,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let io = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        io.set_nodelay(true)?;
        Ok(Conn {
            io,
            buf: BytesMut::new(),
        })
    }

    /// Whether an idle connection can take a request: the instance has neither closed it nor
    /// sent anything unasked. No system call unless the socket has become readable.
    pub fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                matches!(self.io.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Makes room in a read buffer: a new one of [`READ_CHUNK`] only once the one in use is nearly
/// full. Responses are cut off its front and their headers share it, so a buffer is reused for
/// many responses instead of being replaced (and shared anew) on every one.
pub(super) fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// A request on its way to an instance: its head encoded once (a retry resends the same bytes)
/// and its body, which can be sent only once.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub method: Method,
    pub head: Vec<u8>,
    body: Option<Incoming>,
    chunked: bool,
    body_sent: bool,
}

impl Outgoing {
    /// Encodes a prepared request (origin-form, hop-by-hop headers already out), with what the
    /// proxy adds to it.
    pub fn new(req: http::Request<Incoming>, forwarding: &Forwarding) -> Outgoing {
        let (parts, body) = req.into_parts();
        let body = (!hyper::body::Body::is_end_stream(&body)).then_some(body);
        // A body of unknown length (the client's was chunked) goes out chunked.
        let chunked = body.as_ref().is_some_and(|b| {
            hyper::body::Body::size_hint(b).exact().is_none()
                || !parts.headers.contains_key(header::CONTENT_LENGTH)
        });
        Outgoing {
            head: encode_head(&parts, chunked, forwarding),
            method: parts.method,
            body,
            chunked,
            body_sent: false,
        }
    }

    /// Whether it has no body: the same head can simply be sent again.
    pub fn bodiless(&self) -> bool {
        self.body.is_none()
    }

    /// Whether it can still be sent again: no body, or a body not yet started.
    pub fn resendable(&self) -> bool {
        !self.body_sent
    }
}

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
fn encode_head(parts: &http::request::Parts, chunked: bool, forwarding: &Forwarding) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut line = |name: &[u8], value: &[u8]| {
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
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

/// Why an exchange failed.
#[derive(Debug)]
pub(super) enum ExchangeError {
    /// The request head could not be written: the connection was dead before anything was sent.
    Unsent(io::Error),
    /// The instance closed the connection before sending a byte of response.
    Closed,
    /// Anything else: the request was sent (at least in part) and no usable response came back.
    Failed(io::Error),
}

impl ExchangeError {
    pub fn into_io(self) -> io::Error {
        match self {
            ExchangeError::Unsent(err) | ExchangeError::Failed(err) => err,
            ExchangeError::Closed => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the instance closed the connection before answering",
            ),
        }
    }
}

/// Sends `req` on `conn` and reads the response head.
pub(super) async fn exchange(conn: &mut Conn, req: &mut Outgoing) -> Result<Head, ExchangeError> {
    conn.io
        .write_all(&req.head)
        .await
        .map_err(ExchangeError::Unsent)?;
    let Some(body) = req.body.as_mut() else {
        return read_head(&mut conn.io, &mut conn.buf, &req.method).await;
    };
    req.body_sent = true;
    // An instance may answer before it has read the whole body (a 413, a redirect): its answer
    // is read while the body goes out, and is passed on as soon as it is whole.
    let (mut reader, mut writer) = conn.io.split();
    let sending = send_body(&mut writer, body, req.chunked);
    let reading = read_head(&mut reader, &mut conn.buf, &req.method);
    tokio::pin!(sending, reading);
    let early = |head: Head| Head {
        // The connection is in the middle of a request body: it cannot carry another request.
        keep_alive: false,
        ..head
    };
    tokio::select! {
        biased;
        head = &mut reading => head.map(early),
        sent = &mut sending => match sent {
            Ok(()) => reading.await,
            Err(BodyError::Client(err)) => Err(ExchangeError::Failed(err)),
            // The instance stopped reading (it answered and closed, say): its answer, if any,
            // is what the client gets.
            Err(BodyError::Instance(err)) => match reading.await {
                Ok(head) => Ok(early(head)),
                Err(_) => Err(ExchangeError::Failed(err)),
            },
        },
    }
}

/// Why a request body could not be sent whole.
enum BodyError {
    /// Reading it from the client failed (the client went away).
    Client(io::Error),
    /// Writing it to the instance failed.
    Instance(io::Error),
}

async fn send_body<W: AsyncWrite + Unpin>(
    io: &mut W,
    body: &mut Incoming,
    chunked: bool,
) -> Result<(), BodyError> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| BodyError::Client(io::Error::other(err)))?;
        let Ok(data) = frame.into_data() else {
            continue; // Trailers are not passed on.
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            let mut chunk = Vec::with_capacity(data.len() + 12);
            chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            chunk.extend_from_slice(&data);
            chunk.extend_from_slice(b"\r\n");
            io.write_all(&chunk).await.map_err(BodyError::Instance)?;
        } else {
            io.write_all(&data).await.map_err(BodyError::Instance)?;
        }
    }
    if chunked {
        io.write_all(b"0\r\n\r\n")
            .await
            .map_err(BodyError::Instance)?;
    }
    Ok(())
}

async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Head, ExchangeError> {
    let mut received = false;
    loop {
        if !buf.is_empty() {
            received = true;
            if let Some(head) = parse_head(buf, method).map_err(ExchangeError::Failed)? {
                return Ok(head);
            }
            if buf.len() > MAX_HEAD {
                return Err(ExchangeError::Failed(invalid("response head too large")));
            }
        }
        make_room(buf);
        match io.read_buf(buf).await {
            Ok(0) if !received => return Err(ExchangeError::Closed),
            Ok(0) => {
                return Err(ExchangeError::Failed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the instance closed the connection in the middle of a response head",
                )))
            }
            Ok(_) => {}
            Err(err) if !received => {
                // A reset before any response byte is the same as a close.
                tracing::debug!("instance connection failed before answering: {err}");
                return Err(ExchangeError::Closed);
            }
            Err(err) => return Err(ExchangeError::Failed(err)),
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Parses a complete head at the start of `buf` (skipping 1xx other than 101) and removes it;
/// `None` while it is incomplete.
fn parse_head(buf: &mut BytesMut, method: &Method) -> io::Result<Option<Head>> {
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
                !has_token(&headers, "close")
            } else {
                has_token(&headers, "keep-alive")
            };
        return Ok(Some(Head {
            status,
            headers,
            framing,
            keep_alive,
        }));
    }
}

fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
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
        String::from_utf8(encode_head(&parts, false, &forwarding)).unwrap()
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
        let head = parse_head(&mut buf, &method).unwrap();
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
