//! The proxy's HTTP/1.1 client to its instances, run inside the client connection's own task: the
//! request head is written and the response head read on a pooled socket directly, with no
//! connection task and no channels in between (the hand-offs that made hyper's client the larger
//! half of the proxy's cost per request). The response body is read by `body::Proxied`, in the
//! same task, as the client side asks for it.
//!
//! What it speaks: origin-form requests, bodies by `content-length` or chunked, responses framed
//! by length, chunks or close (RFC 9112 section 6.3), 1xx responses skipped, 101 handed back with
//! the socket for a tunnel; an answer that comes while the request body still goes out is read
//! and passed on. The heads themselves are written and parsed in `head`.

use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::header;
use http::Method;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::head::{self, Forwarding, Head};
use super::pace::{BodyClock, Pace};

/// How long a connect to an instance may take before it counts as failed (and is retried on
/// another one). Instances are local, so a slow connect means an overloaded or wedged one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A response head larger than this is refused (hyper's default limit is about the same).
const MAX_HEAD: usize = 64 * 1024;
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
            method: parts.method,
            body,
            chunked,
            body_sent: false,
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

    /// Whether it can still be sent again: no body, or a body not yet started.
    pub fn resendable(&self) -> bool {
        !self.body_sent
    }
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
    /// The client's body failed: it stopped coming (`io::ErrorKind::TimedOut`), broke or was
    /// cut off. The client's fault, not the instance's.
    Client(io::Error),
}

impl ExchangeError {
    pub fn into_io(self) -> io::Error {
        match self {
            ExchangeError::Unsent(err)
            | ExchangeError::Failed(err)
            | ExchangeError::Client(err) => err,
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
    let sending = send_body(&mut writer, body, req.chunked, req.body_pace);
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
            Err(BodyError::Client(err)) => Err(ExchangeError::Client(err)),
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
    pace: Pace,
) -> Result<(), BodyError> {
    let mut trailers = None;
    // Only the waits for the client count, not the writes to the instance. The timer is armed
    // only if a frame is not there at once, and moved only when it fires.
    let mut clock = BodyClock::start(pace);
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
                trailers = frame.into_trailers().ok();
                continue;
            }
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
        // The last chunk, then the trailer fields, then the empty line that ends the body.
        let mut end = b"0\r\n".to_vec();
        for (name, value) in trailers.iter().flatten() {
            head::write_field(&mut end, name.as_str().as_bytes(), value.as_bytes());
        }
        end.extend_from_slice(b"\r\n");
        io.write_all(&end).await.map_err(BodyError::Instance)?;
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
            if let Some(head) = head::parse_response(buf, method).map_err(ExchangeError::Failed)? {
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

pub(super) fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}
