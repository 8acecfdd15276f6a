//! One downstream (client) connection served to its end, with one timer for all its checks
//! (rearmed once per period, never per request): closed when nobody uses it (`idle_timeout`: no
//! request begun and none in progress — an idle keep-alive connection, or a client too slow to
//! finish its request head), closed when the proxy needs its room (`Downstream::wait_for_room`),
//! cut when its client stopped taking a response (`send_timeout` and `min_rate`, see `pace`),
//! and let go of when the proxy closes: from then on each answer says `Connection: close`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::header::{HeaderValue, CONNECTION};
use hyper::{Response, StatusCode};
use tokio::sync::futures::Notified;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFuture;

use super::body::ResponseBody;
use super::downstream::{Active, Conn, IDLE_GRACE};
use super::pace::Pace;

impl Conn {
    /// Drives `conn`, served by `worker`, to its end; once the close began, shuts it down
    /// (gracefully: a response in progress still goes out) when its client stays idle for
    /// [`IDLE_GRACE`] or at the deadline — at once when it is `multiplexed` (HTTP/2, whose
    /// GOAWAY lets the streams in progress finish and tells the client to open a new connection
    /// for the next). `None`: dropped, after it stayed unused, was closed for room or its client
    /// stopped taking its response.
    pub(super) async fn serve<C, T, E>(
        self: &Arc<Self>,
        worker: usize,
        conn: C,
        multiplexed: bool,
        graceful_shutdown: impl Fn(&mut C),
    ) -> Option<Result<T, E>>
    where
        C: Future<Output = Result<T, E>> + Unpin,
    {
        let _seat = self.downstream.seat(worker, self);
        let mut conn = conn;
        let idle_timeout = self.limits.idle_timeout;
        let ended = {
            let closing = std::pin::pin!(self.downstream.closing.cancelled());
            let evicted = std::pin::pin!(self.evicted.notified());
            let timer = std::pin::pin!(tokio::time::sleep(idle_timeout));
            UntilClosing {
                conn: &mut conn,
                tracked: self,
                closing,
                evicted,
                listening: false,
                timer,
                idle_at: Instant::now() + idle_timeout,
                begun: 0,
                send: self.limits.send(),
            }
            .await
        };
        match ended {
            Ended::Done(result) => return Some(result),
            Ended::Idle | Ended::Evicted => {
                // Gracefully: the end of a response still being written to a slow reader goes
                // out. A head never finished (or that end) gets one more period, then is dropped.
                graceful_shutdown(&mut conn);
                return tokio::time::timeout(idle_timeout, conn).await.ok();
            }
            Ended::Stalled(why) => {
                // Not gracefully: what is left to send is what the client does not take.
                tracing::debug!("client connection cut: {why}");
                return None;
            }
            Ended::Closing if multiplexed => {
                graceful_shutdown(&mut conn);
                return Some(conn.await);
            }
            Ended::Closing => {}
        }
        loop {
            // An answer missed between two turns costs nothing: each turn waits afresh.
            tokio::select! {
                result = &mut conn => return Some(result),
                () = self.downstream.cut.cancelled() => break,
                () = self.answered.notified() => {}
                () = tokio::time::sleep(IDLE_GRACE) => break,
            }
        }
        graceful_shutdown(&mut conn);
        Some(conn.await)
    }

    /// Notes a request, and marks its response as the connection's last once the close began
    /// (HTTP/1.1; a `multiplexed` connection is told by GOAWAY). `active` goes with the response
    /// body: the request is in progress until it is sent.
    pub(super) fn answer(
        &self,
        mut response: Response<ResponseBody>,
        active: Active,
        multiplexed: bool,
    ) -> Response<ResponseBody> {
        response.body_mut().hold(active);
        let closing = self.downstream.closing_flag.load(Ordering::SeqCst);
        // Only `serve` after the close began listens.
        if closing {
            self.answered.notify_waiters();
        }
        // A 101 hands the connection to a tunnel: its own `Connection: upgrade` must stay.
        if multiplexed {
            // HTTP/2 has no `Connection` field: its connection-level signals are frames.
            response.headers_mut().remove(CONNECTION);
        } else if closing && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// How a connection's run before the close ended.
enum Ended<R> {
    Done(R),
    Closing,
    Idle,
    /// Closed to make room for a new connection.
    Evicted,
    /// Its client took no response bytes for too long; why.
    Stalled(String),
}

/// A connection driven until it ends, the close begins, or its timer finds it unused, wanted for
/// room or stalled. The close and room signals are polled once to register the task's waker,
/// then only after a flag says they fired: a connection is woken several times per request, and
/// each poll of the token takes a lock.
struct UntilClosing<'a, 'b, C> {
    /// hyper's connection, served.
    conn: &'a mut C,
    /// The same connection as `Downstream` keeps track of it.
    tracked: &'b Conn,
    closing: Pin<&'a mut WaitForCancellationFuture<'b>>,
    evicted: Pin<&'a mut Notified<'b>>,
    listening: bool,
    /// Fires at the next idle check, or earlier at the deadline of a blocked write.
    timer: Pin<&'a mut Sleep>,
    /// When the current idle period ends.
    idle_at: Instant,
    /// `Conn::begun` at the start of the current idle period.
    begun: u64,
    send: Pace,
}

impl<C: Future + Unpin> Future for UntilClosing<'_, '_, C> {
    type Output = Ended<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(result) = Pin::new(&mut *this.conn).poll(cx) {
            return Poll::Ready(Ended::Done(result));
        }
        // The task's waker is the same on every poll, so the one registered first stays valid.
        if !this.listening {
            this.listening = true;
            // Registers for `Downstream::evict_oldest_idle`'s wake; its flag says it came.
            let _ = this.evicted.as_mut().poll(cx);
            if this.closing.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ended::Closing);
            }
        } else if this.tracked.downstream.closing_flag.load(Ordering::SeqCst)
            && this.closing.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Ended::Closing);
        }
        if this.tracked.evict.load(Ordering::Relaxed) {
            return Poll::Ready(Ended::Evicted);
        }
        // A write found the client's socket full: its deadline may come before the next check.
        // One load while writes go out.
        let send_deadline = this.tracked.send.deadline(&this.send);
        if let Some(deadline) = send_deadline {
            if deadline < this.timer.deadline() {
                this.timer.as_mut().reset(deadline);
            }
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let send_deadline = this.tracked.send.deadline(&this.send);
            if send_deadline.is_some_and(|deadline| now >= deadline) {
                return Poll::Ready(Ended::Stalled(this.tracked.send.why(&this.send)));
            }
            if now >= this.idle_at {
                let begun = this.tracked.begun.load(Ordering::Relaxed);
                if begun == this.begun && this.tracked.active.load(Ordering::Relaxed) == 0 {
                    return Poll::Ready(Ended::Idle);
                }
                this.begun = begun;
                this.idle_at = now + this.tracked.limits.idle_timeout;
            }
            let next = send_deadline.map_or(this.idle_at, |d| d.min(this.idle_at));
            this.timer.as_mut().reset(next);
        }
        Poll::Pending
    }
}
