//! The response body streamed from an instance to the client, read from the instance's socket in
//! the client connection's own task as hyper asks for it (by length, chunks or close). It keeps
//! its request counted as in flight until it is fully sent, and returns the instance's connection
//! to the pool at its end. The trailer fields of a chunked body are passed on (the client gets
//! those its `Trailer` header names).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::backend::InFlight;
use super::client::{make_room, Conn};
use super::clients::Active;
use super::head::{self, Framing};

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A chunk-size line longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// What is sent to the client.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    /// A response made by the proxy itself (503, 502), or a bodiless one.
    Static(Option<Bytes>),
    Proxied(Proxied),
}

impl ResponseBody {
    pub fn text(text: &'static str) -> ResponseBody {
        ResponseBody::Static(Some(Bytes::from_static(text.as_bytes())))
    }

    pub fn empty() -> ResponseBody {
        ResponseBody::Static(None)
    }

    /// Keeps `active` until an instance's body has been sent whole (a stream may run for long);
    /// the proxy's own short bodies let go of it at once.
    pub(super) fn hold(&mut self, active: Active) {
        if let ResponseBody::Proxied(proxied) = self {
            proxied.active = Some(active);
        }
    }

    pub fn proxied(
        conn: Conn,
        framing: Framing,
        keep_alive: bool,
        worker: usize,
        in_flight: InFlight,
    ) -> ResponseBody {
        let decoder = match framing {
            Framing::Empty | Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunk::Size),
            Framing::Close => Decoder::Close,
        };
        ResponseBody::Proxied(Proxied {
            conn: Some(conn),
            decoder,
            keep_alive,
            worker,
            in_flight,
            cut: None,
            active: None,
        })
    }
}

/// Where a body is in its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    /// Bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the instance closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Bytes left in the current chunk.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// What the buffered bytes gave.
enum Step {
    Data(Bytes),
    /// The trailer fields that end a chunked body (the body is done).
    Trailers(HeaderMap),
    End,
    NeedMore,
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
    /// Made only when the body has to wait for the instance (a stream, a slow body): most bodies
    /// are complete in the first read and never need it, which saves an allocation per request.
    cut: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// The client connection's request in progress, until this body has been sent whole.
    active: Option<Active>,
}

impl Decoder {
    /// Decodes what is buffered.
    fn step(&mut self, buf: &mut bytes::BytesMut) -> Result<Step, BoxError> {
        loop {
            match *self {
                Decoder::Done => return Ok(Step::End),
                Decoder::Length(left) | Decoder::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let rest = left - n as u64;
                    *self = match *self {
                        Decoder::Length(_) if rest == 0 => Decoder::Done,
                        Decoder::Length(_) => Decoder::Length(rest),
                        _ if rest == 0 => Decoder::Chunked(Chunk::DataEnd),
                        _ => Decoder::Chunked(Chunk::Data(rest)),
                    };
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                Decoder::Close => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                Decoder::Chunked(Chunk::Trailers) => {
                    let Some(trailers) = head::parse_trailers(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    *self = Decoder::Done;
                    if !trailers.is_empty() {
                        return Ok(Step::Trailers(trailers));
                    }
                }
                Decoder::Chunked(state) => {
                    let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err("chunk line too long".into());
                        }
                        return Ok(Step::NeedMore);
                    };
                    let line = &buf[..eol];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    *self = match state {
                        Chunk::Size => {
                            let digits = line.split(|&b| b == b';').next().unwrap_or_default();
                            let size = std::str::from_utf8(digits)
                                .ok()
                                .and_then(|d| u64::from_str_radix(d.trim(), 16).ok())
                                .ok_or("invalid chunk size")?;
                            Decoder::Chunked(if size == 0 {
                                Chunk::Trailers
                            } else {
                                Chunk::Data(size)
                            })
                        }
                        Chunk::DataEnd if line.is_empty() => Decoder::Chunked(Chunk::Size),
                        Chunk::DataEnd => return Err("chunk data longer than its size".into()),
                        Chunk::Data(_) | Chunk::Trailers => unreachable!("handled above"),
                    };
                    buf.advance(eol + 1);
                }
            }
        }
    }
}

impl Proxied {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.decoder.step(&mut conn.buf) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::Trailers(trailers)) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::NeedMore) => {}
                Err(err) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(err)));
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Static(bytes) => bytes.is_none(),
            ResponseBody::Proxied(proxied) => proxied.decoder == Decoder::Done,
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
        }
    }
}

impl Drop for Proxied {
    fn drop(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the decoder over `wire` and returns the data and whether the body ended.
    fn decode(mut decoder: Decoder, wire: &str) -> (String, bool) {
        let mut buf = bytes::BytesMut::from(wire.as_bytes());
        let mut out = Vec::new();
        loop {
            match decoder.step(&mut buf).unwrap() {
                Step::Data(d) => out.extend_from_slice(&d),
                Step::Trailers(_) => {}
                Step::End => return (String::from_utf8(out).unwrap(), true),
                Step::NeedMore => return (String::from_utf8(out).unwrap(), false),
            }
        }
    }

    #[test]
    fn chunked_bodies_are_decoded_across_reads() {
        let wire = "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(
            decode(Decoder::Chunked(Chunk::Size), wire),
            ("hello, world".into(), true)
        );
        assert_eq!(
            decode(Decoder::Chunked(Chunk::Size), "5\r\nhel"),
            ("hel".into(), false)
        );
    }

    #[test]
    fn trailer_fields_are_read_after_the_last_chunk() {
        let mut buf = bytes::BytesMut::from(&b"0\r\nx-checksum: abc \r\ngrpc-status:0\r\n\r\n"[..]);
        let mut decoder = Decoder::Chunked(Chunk::Size);
        let Step::Trailers(trailers) = decoder.step(&mut buf).unwrap() else {
            panic!("only trailers in this body");
        };
        let fields: Vec<String> = trailers
            .iter()
            .map(|(name, value)| format!("{name}={}", value.to_str().unwrap()))
            .collect();
        assert_eq!(fields, ["x-checksum=abc", "grpc-status=0"]);
        assert!(matches!(decoder.step(&mut buf).unwrap(), Step::End));
        let mut bad = bytes::BytesMut::from(&b"0\r\nno colon\r\n\r\n"[..]);
        let mut decoder = Decoder::Chunked(Chunk::Size);
        assert!(decoder.step(&mut bad).is_err());
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let mut buf = bytes::BytesMut::from("abcdef".as_bytes());
        let mut decoder = Decoder::Length(4);
        assert!(matches!(decoder.step(&mut buf).unwrap(), Step::Data(d) if d == "abcd"));
        assert_eq!(decoder, Decoder::Done);
        assert_eq!(&buf[..], b"ef");
    }
}
