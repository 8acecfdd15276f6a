//! The response body streamed from an instance to the client, read from the instance's socket in
//! the client connection's own task as hyper asks for it (by length, chunks or close). It keeps
//! its request counted as in flight until it is fully sent, and returns the instance's connection
//! to the pool at its end. The trailer fields of a chunked body are passed on (the client gets
//! those its `Trailer` header names). A request's access-log line, if the app keeps a log, goes
//! with its body and is written when the body is done. An HTTP/2 instance's body (`Streamed`)
//! is hyper's, passed on frame by frame.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::access_entry::Entry;
use super::downstream::Active;
use super::framing::{Decoder, Framing, Step};
use super::route::{InFlight, Routed, Slot};
use super::upstream::{make_room, Conn};

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What is sent to the client.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    /// A response made by the proxy itself (503, 502), or a bodiless one.
    Static(Option<Bytes>),
    Proxied(Proxied),
    /// An instance's body over HTTP/2 (`upstream: h2c` or `h2`), frames and trailers as they come.
    Streamed(Streamed),
}

impl ResponseBody {
    pub fn text(text: &'static str) -> ResponseBody {
        ResponseBody::Static(Some(Bytes::from_static(text.as_bytes())))
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::Static(None)
    }

    /// Completes the request's access-log line with the response: written at once for the
    /// proxy's own short body, when the body has been sent for an instance's.
    pub(super) fn log_to(&mut self, mut entry: Box<Entry>) {
        match self {
            ResponseBody::Static(bytes) => {
                entry.sent(bytes.as_ref().map_or(0, Bytes::len));
            }
            ResponseBody::Proxied(proxied) => proxied.entry = Some(entry),
            ResponseBody::Streamed(streamed) => streamed.entry = Some(entry),
        }
    }

    /// Keeps `active` until an instance's body has been sent whole (a stream may run for long);
    /// the proxy's own short bodies let go of it at once.
    pub(super) fn hold(&mut self, active: Active) {
        match self {
            ResponseBody::Proxied(proxied) => proxied.active = Some(active),
            ResponseBody::Streamed(streamed) => streamed.active = Some(active),
            ResponseBody::Static(_) => {}
        }
    }

    pub fn proxied(
        conn: Conn,
        framing: Framing,
        keep_alive: bool,
        worker: usize,
        (in_flight, slot): (InFlight, Slot),
    ) -> ResponseBody {
        ResponseBody::Proxied(Proxied {
            slot,
            sent: 0,
            conn: Some(conn),
            decoder: Decoder::new(framing),
            keep_alive,
            worker,
            in_flight,
            cut: None,
            active: None,
            entry: None,
        })
    }
}

/// An instance's response body on its way to the client.
#[derive(Debug)]
pub(crate) struct Proxied {
    /// The instance connection; taken away when it is not reusable.
    conn: Option<Conn>,
    decoder: Decoder,
    keep_alive: bool,
    /// The worker whose pool the connection goes back to.
    worker: usize,
    in_flight: InFlight,
    /// The slot the request was sent as, and the body bytes passed on so far: counted on the
    /// backend once, when the body is dropped.
    slot: Slot,
    sent: u64,
    /// Made only when the body has to wait for the instance (a stream, a slow body): most bodies
    /// are complete in the first read and never need it, which saves an allocation per request.
    cut: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// The client connection's request in progress, until this body has been sent whole.
    active: Option<Active>,
    /// The request's access-log line (with the log on), written when this body is dropped.
    entry: Option<Box<Entry>>,
}

impl Proxied {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.decoder.step(&mut conn.buf) {
                Ok(Step::Data(data)) => {
                    self.sent += data.len() as u64;
                    if let Some(entry) = &mut self.entry {
                        entry.sent(data.len());
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Trailers(trailers)) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::NeedMore) => {}
                Err(err) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(err.into())));
                }
            }
            let conn = self.conn.as_mut().expect("checked above");
            make_room(&mut conn.buf);
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf) {
                Poll::Ready(Ok(0)) if self.decoder == Decoder::Close => {
                    self.decoder = Decoder::Done;
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(
                        "the instance closed the connection in the middle of a body".into(),
                    )));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => {
                    // A broken exchange: the instance connection is not reusable.
                    self.conn = None;
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Pending => {
                    let state = self.in_flight.state();
                    let cut = self.cut.get_or_insert_with(|| {
                        Box::pin(state.cut_of(self.worker).clone().cancelled_owned())
                    });
                    if cut.as_mut().poll(cx).is_ready() {
                        self.conn = None;
                        return Poll::Ready(Some(Err(
                            "connection cut: the instance was drained".into()
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Static(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Proxied(proxied) => proxied.poll_frame(cx),
            ResponseBody::Streamed(streamed) => streamed.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Static(bytes) => bytes.is_none(),
            ResponseBody::Proxied(proxied) => proxied.decoder == Decoder::Done,
            ResponseBody::Streamed(streamed) => streamed.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Static(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ResponseBody::Static(None) => SizeHint::with_exact(0),
            ResponseBody::Proxied(proxied) => match proxied.decoder {
                Decoder::Length(left) => SizeHint::with_exact(left),
                Decoder::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
            ResponseBody::Streamed(streamed) => streamed.body.size_hint(),
        }
    }
}

impl Drop for Proxied {
    fn drop(&mut self) {
        self.in_flight
            .state()
            .record_sent(self.worker, self.slot, self.sent);
        // hyper stops polling a body of known length once it has all of it, so the end is seen
        // here rather than in poll_frame. A body dropped before its end (the client went away)
        // leaves its connection mid-response: that one is closed, not pooled; so is one with
        // bytes past the response (the instance sent more than it said).
        if self.decoder == Decoder::Done && self.keep_alive {
            if let Some(conn) = self.conn.take().filter(|c| c.buf.is_empty()) {
                self.in_flight.state().give_back(self.worker, conn);
            }
        }
    }
}

/// An instance's HTTP/2 body on its way to the client: it keeps its request in flight until it
/// ends and counts its bytes. A gRPC answer is judged by its `grpc-status` (in the trailers, or
/// in the head of an answer without a body): counted when the status is known, a server error
/// (`UNKNOWN`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`) as a 5xx is.
#[derive(Debug)]
pub(crate) struct Streamed {
    body: hyper::body::Incoming,
    in_flight: InFlight,
    worker: usize,
    slot: Slot,
    sent: u64,
    /// A gRPC answer not counted yet: how it was routed and its time to the head.
    grpc: Option<(Routed, std::time::Duration)>,
    active: Option<Active>,
    entry: Option<Box<Entry>>,
}

impl Streamed {
    /// `grpc`: the answer is gRPC's and its status is not known yet (how it was routed, and its
    /// time to the head), else it was counted by its HTTP status.
    pub fn body(
        body: hyper::body::Incoming,
        (in_flight, slot): (InFlight, Slot),
        worker: usize,
        grpc: Option<(Routed, std::time::Duration)>,
    ) -> ResponseBody {
        ResponseBody::Streamed(Streamed {
            body,
            in_flight,
            worker,
            slot,
            sent: 0,
            grpc,
            active: None,
            entry: None,
        })
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                    if let Some(entry) = &mut self.entry {
                        entry.sent(data.len());
                    }
                }
                if let Some(trailers) = frame.trailers_ref() {
                    self.judge(grpc_status(trailers));
                }
            }
            // Ended without a status: the instance broke the stream or forgot the trailers.
            None => self.judge(Some(2)),
            Some(Err(_)) => self.judge(Some(14)),
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    /// Counts a gRPC answer by its status (none: an ordinary answer, already counted).
    fn judge(&mut self, status: Option<u32>) {
        let (Some((routed, latency)), Some(status)) = (self.grpc, status) else {
            return;
        };
        self.grpc = None;
        self.in_flight.state().record(
            self.worker,
            routed,
            self.slot,
            grpc_as_http(status),
            latency,
        );
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        let state = self.in_flight.state();
        state.record_sent(self.worker, self.slot, self.sent);
        // The client went away before the status: not the instance's failure.
        if let Some((routed, latency)) = self.grpc.take() {
            state.record(self.worker, routed, self.slot, 499, latency);
        }
    }
}

/// The `grpc-status` of a head or trailers, if it has one.
pub(crate) fn grpc_status(fields: &http::HeaderMap) -> Option<u32> {
    fields
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The HTTP status class a gRPC status counts as: 0 is 200; the server's failures (2, 4, 13,
/// 14, 15) are 500; the rest (a bad argument, not found, denied…) are the client's, 400.
pub(crate) fn grpc_as_http(status: u32) -> u16 {
    match status {
        0 => 200,
        2 | 4 | 13 | 14 | 15 => 500,
        _ => 400,
    }
}
