//! The proxy's client connections as a whole: how many are open, and how they are let go of when
//! the proxy closes (a supervisor restart or hand-over) without failing a single request.
//!
//! Closing never cuts a connection between two requests of an active client, which would race
//! with the client's next request already on the wire: from [`Clients::close`] on, every response
//! carries `Connection: close`, so each client reconnects after its next answer (to the listening
//! socket, which the next supervisor serves). Only a connection idle for [`IDLE_GRACE`] after that
//! is closed by us, and at the deadline every remaining one is shut down gracefully.
//!
//! It also closes the connections nobody uses: one with no request begun for [`IDLE_TIMEOUT`]
//! and none in progress — an idle keep-alive connection, or a client too slow to finish its
//! request head (slowloris). One timer per connection, rearmed once per period rather than per
//! request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::header::{HeaderValue, CONNECTION};
use hyper::{Response, StatusCode};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::body::ResponseBody;

/// After the close began, a connection that sent no request for this long is closed: its client
/// is not one with a request about to arrive.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// After the deadline, how long graceful shutdowns get to finish their last response.
const SETTLE: Duration = Duration::from_secs(2);

/// The default of `app.idle_timeout`: a connection with no request begun for this long and none
/// in progress is closed. It is
/// checked once per period, so an idle keep-alive connection is closed after one to two periods;
/// a client still sending its request head, or still taking the end of a response, gets one more
/// before it is dropped (nginx's `client_header_timeout`, `keepalive_timeout` and `send_timeout`
/// are 60, 75 and 60 s).
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Every open client connection of one proxy.
#[derive(Debug, Default)]
pub(super) struct Clients {
    open: AtomicUsize,
    /// Woken whenever a connection ends.
    ended: Notify,
    /// Set by `close`: responses say `Connection: close` and idle connections are closed.
    closing: CancellationToken,
    /// `closing` as a plain flag, read on every response and every wake of a connection (the
    /// token's own check takes a lock).
    closing_flag: AtomicBool,
    /// Set at the deadline of `close`: every remaining connection is shut down.
    cut: CancellationToken,
}

/// One client connection as [`Clients`] counts it; dropping it counts the connection as ended.
#[derive(Debug)]
pub(super) struct Open {
    clients: Arc<Clients>,
    /// Woken by every answer once the close began, so the closing connection can tell whether
    /// its client is active.
    answered: Notify,
    /// Requests begun, for the idle check.
    begun: AtomicU64,
    /// Requests begun and not yet answered to their last byte.
    active: AtomicUsize,
    /// How long a connection may sit unused before it is closed: [`IDLE_TIMEOUT`].
    idle_timeout: Duration,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.clients.open.fetch_sub(1, Ordering::SeqCst);
        self.clients.ended.notify_waiters();
    }
}

impl Clients {
    /// Counts a new connection until the returned guard drops.
    pub(super) fn open(self: &Arc<Self>, idle_timeout: Duration) -> Arc<Open> {
        self.open.fetch_add(1, Ordering::SeqCst);
        Arc::new(Open {
            clients: self.clone(),
            answered: Notify::new(),
            begun: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            idle_timeout,
        })
    }

    /// Begins the close: from now on every response says `Connection: close`.
    pub(super) fn begin_close(&self) {
        self.closing_flag.store(true, Ordering::SeqCst);
        self.closing.cancel();
    }

    /// Begins the close and waits until every connection ended or `timeout` passed; then shuts
    /// the rest down and returns how many were still open.
    pub(super) async fn close(&self, timeout: Duration) -> u64 {
        self.begin_close();
        if !self.wait_ended(timeout).await {
            let open = self.open.load(Ordering::SeqCst) as u64;
            tracing::info!("client close deadline of {timeout:?} passed: shutting down {open} open connection(s)");
            self.cut.cancel();
            self.wait_ended(SETTLE).await;
            return open;
        }
        0
    }

    async fn wait_ended(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ended = self.ended.notified();
            if self.open.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return self.open.load(Ordering::SeqCst) == 0;
            }
        }
    }
}

/// One request of a connection in progress, until its response has gone out to the last byte.
#[derive(Debug)]
pub(super) struct Active(Arc<Open>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Open {
    /// Resolves at the deadline of the proxy's close: a tunnel (which keeps its connection
    /// counted as open) ends then.
    pub(super) async fn cut(&self) {
        self.clients.cut.cancelled().await;
    }

    /// Notes a request as begun: the connection is not idle until the returned guard drops.
    pub(super) fn begin(self: &Arc<Self>) -> Active {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }

    /// Notes a request, and marks its response as the connection's last once the close began.
    /// `active` goes with the response body: the request is in progress until it is sent.
    pub(super) fn answer(
        &self,
        mut response: Response<ResponseBody>,
        active: Active,
    ) -> Response<ResponseBody> {
        response.body_mut().hold(active);
        let closing = self.clients.closing_flag.load(Ordering::SeqCst);
        // Only `serve` after the close began listens.
        if closing {
            self.answered.notify_waiters();
        }
        // A 101 hands the connection to a tunnel: its own `Connection: upgrade` must stay.
        if closing && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// Drives `conn` to its end; once the close began, shuts it down (gracefully: a response in
    /// progress still goes out) when its client stays idle for [`IDLE_GRACE`] or at the deadline.
    /// `None`: dropped after it stayed unused (see [`IDLE_TIMEOUT`]).
    pub(super) async fn serve<C, T, E>(
        &self,
        conn: C,
        graceful_shutdown: impl Fn(&mut C),
    ) -> Option<Result<T, E>>
    where
        C: Future<Output = Result<T, E>> + Unpin,
    {
        let mut conn = conn;
        let ended = {
            let closing = std::pin::pin!(self.clients.closing.cancelled());
            let idle = std::pin::pin!(tokio::time::sleep(self.idle_timeout));
            UntilClosing {
                conn: &mut conn,
                open: self,
                closing,
                listening: false,
                idle,
                begun: 0,
            }
            .await
        };
        match ended {
            Ended::Done(result) => return Some(result),
            Ended::Idle => {
                // Gracefully: the end of a response still being written to a slow reader goes
                // out. A head never finished (or that end) gets one more period, then is dropped.
                graceful_shutdown(&mut conn);
                return tokio::time::timeout(self.idle_timeout, conn).await.ok();
            }
            Ended::Closing => {}
        }
        loop {
            // An answer missed between two turns costs nothing: each turn waits afresh.
            tokio::select! {
                result = &mut conn => return Some(result),
                () = self.clients.cut.cancelled() => break,
                () = self.answered.notified() => {}
                () = tokio::time::sleep(IDLE_GRACE) => break,
            }
        }
        graceful_shutdown(&mut conn);
        Some(conn.await)
    }
}

/// How a connection's run before the close ended.
enum Ended<R> {
    Done(R),
    Closing,
    Idle,
}

/// A connection driven until it ends, the close begins, or it is found unused at the end of an
/// [`IDLE_TIMEOUT`] period. The close signal is polled once to register the task's waker, then
/// only after the flag says it fired: a connection is woken several times per request, and each
/// poll of the token takes a lock.
struct UntilClosing<'a, 'b, C> {
    conn: &'a mut C,
    open: &'b Open,
    closing: Pin<&'a mut tokio_util::sync::WaitForCancellationFuture<'b>>,
    listening: bool,
    idle: Pin<&'a mut tokio::time::Sleep>,
    /// `Open::begun` at the start of the current idle period.
    begun: u64,
}

impl<C: Future + Unpin> Future for UntilClosing<'_, '_, C> {
    type Output = Ended<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(result) = Pin::new(&mut *this.conn).poll(cx) {
            return Poll::Ready(Ended::Done(result));
        }
        // The task's waker is the same on every poll, so the one registered first stays valid.
        if !this.listening || this.open.clients.closing_flag.load(Ordering::SeqCst) {
            this.listening = true;
            if this.closing.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ended::Closing);
            }
        }
        while this.idle.as_mut().poll(cx).is_ready() {
            let begun = this.open.begun.load(Ordering::Relaxed);
            if begun == this.begun && this.open.active.load(Ordering::Relaxed) == 0 {
                return Poll::Ready(Ended::Idle);
            }
            this.begun = begun;
            let next = tokio::time::Instant::now() + this.open.idle_timeout;
            this.idle.as_mut().reset(next);
        }
        Poll::Pending
    }
}
