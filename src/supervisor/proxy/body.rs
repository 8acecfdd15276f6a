//! Bodies that cross the proxy: the request body sent to an instance (streamed, or empty for a
//! replayed request) and the response body streamed back, which keeps its request counted as in
//! flight until it is fully sent, and returns the instance's connection to the pool at its end.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::backend::{InFlight, Sender};

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What is sent to an instance.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// The client's body, streamed as it arrives.
    Incoming(Incoming),
    /// No body: a bodiless request, or one replayed on another instance.
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Incoming(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming(body) => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// What is sent to the client.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    /// A response made by the proxy itself (503, 502).
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

    pub fn proxied(inner: Incoming, sender: Sender, in_flight: InFlight) -> ResponseBody {
        ResponseBody::Proxied(Proxied {
            inner,
            sender: Some(sender),
            in_flight,
            cut: None,
            ended: false,
        })
    }
}

/// An instance's response body on its way to the client.
#[derive(Debug)]
pub(crate) struct Proxied {
    inner: Incoming,
    /// The instance connection, reusable once this body has been read to its end.
    sender: Option<Sender>,
    in_flight: InFlight,
    /// Made only when the body has to wait for the instance (a stream, a slow body): most bodies
    /// are already complete and never need it, which saves an allocation per request.
    cut: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    ended: bool,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let proxied = match self.get_mut() {
            ResponseBody::Static(bytes) => {
                return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b))))
            }
            ResponseBody::Proxied(proxied) => proxied,
        };
        match Pin::new(&mut proxied.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(err))) => {
                // A broken exchange: the instance connection is not reusable.
                proxied.sender = None;
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(None) => {
                proxied.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let state = &proxied.in_flight.0;
                let cut = proxied
                    .cut
                    .get_or_insert_with(|| Box::pin(state.cut.clone().cancelled_owned()));
                if cut.as_mut().poll(cx).is_ready() {
                    proxied.sender = None;
                    return Poll::Ready(Some(Err(
                        "connection cut: the instance was drained".into()
                    )));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Static(bytes) => bytes.is_none(),
            ResponseBody::Proxied(proxied) => proxied.ended || proxied.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Static(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ResponseBody::Static(None) => SizeHint::with_exact(0),
            ResponseBody::Proxied(proxied) => proxied.inner.size_hint(),
        }
    }
}

impl Drop for Proxied {
    fn drop(&mut self) {
        // hyper stops polling a body of known length once it has all of it, so the end is seen
        // here rather than in poll_frame. A body dropped before its end (the client went away)
        // leaves its connection mid-response: that one is closed, not pooled.
        if self.ended || self.inner.is_end_stream() {
            if let Some(sender) = self.sender.take() {
                self.in_flight.0.give_back(sender);
            }
        }
    }
}
