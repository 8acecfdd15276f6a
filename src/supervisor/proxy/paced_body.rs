//! A client's request body on its way to an instance over HTTP/2 (`upstream: h2c` or `h2`),
//! under `pace`'s rule as over HTTP/1.1: hyper's HTTP/2 client pulls it frame by frame, and
//! only the time a pull waits on the client counts — not the time between pulls, when the
//! instance's flow-control window is shut. A body cut at its deadline, or one the client broke,
//! is noted in its [`BodyFailure`] for `forward_h2` to answer the client (408 or 400) rather
//! than blame the instance.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::pace::{BodyClock, Pace};

/// How the client's side of a body failed, once it did.
pub(crate) type BodyFailure = Arc<OnceLock<io::ErrorKind>>;

/// The body of a request sent over HTTP/2, paced.
#[derive(Debug)]
pub(crate) struct PacedBody {
    inner: Incoming,
    clock: BodyClock,
    /// A pull is waiting on the client now.
    waiting: bool,
    /// Armed by the first pull that finds no frame, moved only when it fires.
    timer: Option<Pin<Box<Sleep>>>,
    failure: BodyFailure,
}

impl PacedBody {
    /// `inner` under `pace`; its failure, if any, goes to `failure`.
    pub fn new(inner: Incoming, pace: Pace, failure: BodyFailure) -> PacedBody {
        PacedBody {
            inner,
            clock: BodyClock::start(pace),
            waiting: false,
            timer: None,
            failure,
        }
    }
}

impl Body for PacedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if !this.waiting {
            this.clock.waiting();
            this.waiting = true;
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                this.clock
                    .received(frame.data_ref().map_or(0, |data| data.len()));
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                let _ = this.failure.set(io::ErrorKind::Other);
                Poll::Ready(Some(Err(io::Error::other(err))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => loop {
                let deadline = this.clock.deadline();
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if Instant::now() >= deadline {
                    let _ = this.failure.set(io::ErrorKind::TimedOut);
                    return Poll::Ready(Some(Err(this.clock.timed_out())));
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
