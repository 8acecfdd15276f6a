//! The proxy's upstream side: its HTTP/1.1 client to its instances, run inside the downstream
//! (client) connection's own task. The request head is written and the response head read on a
//! pooled socket directly, with no connection task and no channels in between (the hand-offs that
//! made hyper's client the larger half of the proxy's cost per request). The response body is
//! read by `body::Proxied`, in the same task, as the downstream side asks for it.
//!
//! What it speaks: origin-form requests, bodies by `content-length` or chunked, responses framed
//! by length, chunks or close (RFC 9112 section 6.3, `framing`), 1xx responses skipped, 101
//! handed back with the socket for a tunnel; an answer that comes while the request body still
//! goes out is read and passed on. The heads themselves are written and parsed in `head`.
//!
//! A connection carries another request only when the exchange provably ended at a message
//! boundary: never after an answer that came before the request body was sent whole, after an
//! error answer to a request with a body (the instance may have left the body unread, to be
//! read as the next request), or after a body on a method whose bodies apps ignore.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::Method;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::framing::{invalid, retain_allowed_trailers};
use super::head::{self, Forwarding, Head};
use super::pace::{BodyClock, Pace};

/// How long a connect to an instance may take before it counts as failed (and is retried on
/// another one). Instances are local, so a slow connect means an overloaded or wedged one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A response head larger than this is refused (hyper's default limit is about the same).
const MAX_HEAD: usize = 64 * 1024;
/// Room made in the read buffer before each read.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// How much of a request body is kept while it goes out on a pooled connection, so that it can
/// be sent again on a fresh one if the pooled one turns out to have been closed by the instance
/// before the request reached it.
const RESEND_LIMIT: usize = 64 * 1024;

/// One keep-alive connection to an instance, with the bytes read past the current message.
#[derive(Debug)]
pub(super) struct Conn {
    pub io: TcpStream,
    pub buf: BytesMut,
    /// How long the instance keeps the connection open when idle, as its last answer said.
    pub idle_hint: Option<Duration>,
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
            idle_hint: None,
        })
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
/// and its body, which is read from the client once.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub method: Method,
    pub head: Vec<u8>,
    body: Option<Incoming>,
    chunked: bool,
    /// The body's data frames sent so far, kept while a resend may need them (see
    /// [`RESEND_LIMIT`]), and the trailer fields once read.
    sent: Vec<Bytes>,
    sent_len: usize,
    trailers: Option<HeaderMap>,
    /// Body bytes went out that were not kept: the request cannot be sent again.
    spent: bool,
    /// The client's body was read to its end.
    body_read: bool,
    /// How long the client may take to send its body (`app.body_timeout`, `min_rate`).
    body_pace: Pace,
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
            head: head::encode_request(&parts, chunked, forwarding),
            body_read: body.is_none(),
            method: parts.method,
            body,
            chunked,
            sent: Vec::new(),
            sent_len: 0,
            trailers: None,
            spent: false,
            body_pace: super::limits::ClientLimits::default().body(),
        }
    }

    /// How long the client may take to send the body: see `pace`.
    pub fn pace_body(&mut self, pace: Pace) {
        self.body_pace = pace;
    }

    /// Whether it has no body: the same head can simply be sent again.
    pub fn bodiless(&self) -> bool {
        self.body.is_none()
    }

    /// Whether it can still be sent again: no body, or all of the body sent so far was kept.
    pub fn resendable(&self) -> bool {
        !self.spent
    }

    /// Whether an answer after this request's body may leave the connection at a message
    /// boundary: the body went out whole, the instance took it (not an error status), and the
    /// method is one whose body an app reads (a GET's body is often left unread).
    fn body_consumed(&self, status: http::StatusCode) -> bool {
        self.body_read
            && !status.is_client_error()
            && !status.is_server_error()
            && matches!(self.method, Method::POST | Method::PUT | Method::PATCH)
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub(super) enum ExchangeError {
    /// The request head could not be written: the connection was dead before anything was sent.
    Unsent(io::Error),
    /// The instance closed the connection before sending a byte of response. `refused`: it had
    /// closed it before the request arrived (its kernel reset the bytes that came after its
    /// close), so the instance never saw the request.
    Closed { refused: bool },
    /// The client's body failed: it stopped coming (`io::ErrorKind::TimedOut`), broke or was
    /// cut off. The client's fault, not the instance's.
    Client(io::Error),
    /// Anything else: the request was sent (at least in part) and no usable response came back.
    Failed(io::Error),
}

impl ExchangeError {
    pub fn into_io(self) -> io::Error {
        match self {
            ExchangeError::Unsent(err)
            | ExchangeError::Failed(err)
            | ExchangeError::Client(err) => err,
            ExchangeError::Closed { .. } => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the instance closed the connection before answering",
            ),
        }
    }
}

/// Sends `req` on `conn` and reads the response head. `pooled`: the connection was used before,
/// so it may turn out to have been closed by the instance, and what is sent of the body is kept
/// for a resend on another one.
pub(super) async fn exchange(
    conn: &mut Conn,
    req: &mut Outgoing,
    pooled: bool,
) -> Result<Head, ExchangeError> {
    conn.io
        .write_all(&req.head)
        .await
        .map_err(ExchangeError::Unsent)?;
    if req.body.is_none() {
        let head = read_head(&mut conn.io, &mut conn.buf, &req.method).await;
        return match head {
            Err(err) => Err(closed_before(err, &conn.io, None, pooled).await),
            Ok(head) => Ok(head),
        };
    }
    let (head, write_err) = send_while_reading(conn, req, pooled).await?;
    let mut head = match head {
        Err(err) => return Err(closed_before(err, &conn.io, write_err.as_ref(), pooled).await),
        Ok(head) => head,
    };
    head.keep_alive &= req.body_consumed(head.status);
    Ok(head)
}

/// Sends the body while reading the answer: an instance may answer before it has read the whole
/// body (a 413, a redirect), and its answer is passed on as soon as it is whole. Returns the
/// answer, and the error that stopped the body going out if the instance stopped reading it.
async fn send_while_reading(
    conn: &mut Conn,
    req: &mut Outgoing,
    pooled: bool,
) -> Result<(Result<Head, ExchangeError>, Option<io::Error>), ExchangeError> {
    let method = req.method.clone();
    let (mut reader, mut writer) = conn.io.split();
    let sending = send_body(&mut writer, req, pooled);
    let reading = read_head(&mut reader, &mut conn.buf, &method);
    tokio::pin!(sending, reading);
    // An answer that came before the body was sent whole: the connection is in the middle of
    // a request body and cannot carry another request.
    let early = |head: Head| Head {
        keep_alive: false,
        ..head
    };
    Ok(tokio::select! {
        biased;
        head = &mut reading => (head.map(early), None),
        sent = &mut sending => match sent {
            Ok(()) => (reading.await, None),
            Err(BodyError::Client(err)) => return Err(ExchangeError::Client(err)),
            // The instance stopped reading (it answered and closed, say): its answer, if any,
            // is what the client gets.
            Err(BodyError::Instance(err)) => match reading.await {
                Ok(head) => (Ok(early(head)), None),
                Err(ExchangeError::Closed { .. }) => {
                    (Err(ExchangeError::Closed { refused: false }), Some(err))
                }
                Err(_) => return Err(ExchangeError::Failed(err)),
            },
        },
    })
}

/// Tells a `Closed` exchange whose request the instance never saw: it had closed the connection
/// (a FIN, read as the end) before the request's bytes reached it, and its kernel answered them
/// with a reset, which a socket that saw the FIN reports as `EPIPE` (on the write that met it, or
/// as the socket's pending error). An instance that read the request and then died sends no
/// reset for it.
///
/// The reset can still be on its way when the close is read (under load, far longer than any
/// fixed wait). The FIN itself tells without waiting: it acknowledges every byte its sender's
/// kernel had received, so a request byte still unacknowledged once the FIN is read never
/// reached the instance before it closed. (Had the bytes arrived unread before the close, the
/// instance's kernel would have sent a reset instead of a FIN.) On a pooled connection every
/// earlier byte was acknowledged by the answers that came back, so the unacknowledged bytes are
/// this request's.
async fn closed_before(
    err: ExchangeError,
    io: &TcpStream,
    write_err: Option<&io::Error>,
    pooled: bool,
) -> ExchangeError {
    let ExchangeError::Closed { .. } = err else {
        return err;
    };
    let epipe = |e: &io::Error| e.raw_os_error() == Some(libc::EPIPE);
    let reset = || matches!(io.take_error(), Ok(Some(e)) if epipe(&e));
    // The reset purges what was unacknowledged, so it is looked for again after the count.
    let refused = write_err.is_some_and(epipe)
        || reset()
        || (pooled && unacknowledged(io).unwrap_or(false))
        || reset();
    ExchangeError::Closed { refused }
}

/// Whether some bytes written on `io` are not acknowledged by its peer yet (unsent, or sent and
/// not acknowledged), from the kernel's `TCP_INFO`; `None` if it cannot be read.
fn unacknowledged(io: &TcpStream) -> Option<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: `tcp_info` is plain data (all integers), so all zeroes is a valid value; the kernel
    // writes at most `len` bytes into it and says how many it wrote.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` outlive the call, and `len` is `info`'s size.
    let rc = unsafe {
        libc::getsockopt(
            io.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // `tcpi_notsent_bytes` came with Linux 4.6; an older kernel's shorter answer leaves it 0.
    (rc == 0).then_some(info.tcpi_unacked > 0 || info.tcpi_notsent_bytes > 0)
}

/// Why a request body could not be sent whole.
enum BodyError {
    /// Reading it from the client failed (the client went away).
    Client(io::Error),
    /// Writing it to the instance failed.
    Instance(io::Error),
}

/// Sends the request's body: first what an earlier attempt sent (kept for this), then the rest
/// from the client, then the end of a chunked body with its trailer fields.
async fn send_body<W: AsyncWrite + Unpin>(
    io: &mut W,
    req: &mut Outgoing,
    keep: bool,
) -> Result<(), BodyError> {
    for data in &req.sent {
        write_data(io, data, req.chunked).await?;
    }
    if let Some(body) = req.body.as_mut().filter(|_| !req.body_read) {
        // Only the waits for the client count, not the writes to the instance. The timer is
        // armed only if a frame is not there at once, and moved only when it fires.
        let mut clock = BodyClock::start(req.body_pace);
        let timer = tokio::time::sleep_until(clock.deadline());
        tokio::pin!(timer);
        loop {
            clock.waiting();
            let frame = loop {
                tokio::select! {
                    biased;
                    frame = body.frame() => break frame,
                    () = &mut timer => {
                        let deadline = clock.deadline();
                        if tokio::time::Instant::now() >= deadline {
                            return Err(BodyError::Client(clock.timed_out()));
                        }
                        timer.as_mut().reset(deadline);
                    }
                }
            };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|err| BodyError::Client(io::Error::other(err)))?;
            clock.received(frame.data_ref().map_or(0, |data| data.len()));
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    // Only a chunked body has trailer fields (hyper reads them from no other).
                    req.trailers = frame.into_trailers().ok();
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            if keep && !req.spent && req.sent_len + data.len() <= RESEND_LIMIT {
                req.sent_len += data.len();
                req.sent.push(data.clone());
            } else {
                // Too much to keep: from now on the request can only go out once.
                req.spent = true;
                req.sent = Vec::new();
            }
            write_data(io, &data, req.chunked).await?;
        }
        req.body_read = true;
        if let Some(trailers) = req.trailers.as_mut() {
            retain_allowed_trailers(trailers);
        }
    }
    if req.chunked {
        // The last chunk, then the trailer fields, then the empty line that ends the body.
        let mut end = b"0\r\n".to_vec();
        for (name, value) in req.trailers.iter().flatten() {
            head::write_field(&mut end, name.as_str().as_bytes(), value.as_bytes());
        }
        end.extend_from_slice(b"\r\n");
        io.write_all(&end).await.map_err(BodyError::Instance)?;
    }
    Ok(())
}

/// Writes one piece of a body, as a chunk if the body is chunked.
async fn write_data<W: AsyncWrite + Unpin>(
    io: &mut W,
    data: &Bytes,
    chunked: bool,
) -> Result<(), BodyError> {
    let written = if chunked {
        let mut chunk = Vec::with_capacity(data.len() + 12);
        chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        chunk.extend_from_slice(data);
        chunk.extend_from_slice(b"\r\n");
        io.write_all(&chunk).await
    } else {
        io.write_all(data).await
    };
    written.map_err(BodyError::Instance)
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
            if let Some(head) = head::parse_response(buf, method).map_err(ExchangeError::Failed)? {
                return Ok(head);
            }
            if buf.len() > MAX_HEAD {
                return Err(ExchangeError::Failed(invalid("response head too large")));
            }
        }
        make_room(buf);
        match io.read_buf(buf).await {
            Ok(0) if !received => return Err(ExchangeError::Closed { refused: false }),
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
                return Err(ExchangeError::Closed { refused: false });
            }
            Err(err) => return Err(ExchangeError::Failed(err)),
        }
    }
}
