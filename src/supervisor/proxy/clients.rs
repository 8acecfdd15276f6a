//! The proxy's client connections as a whole: how many are open, and how they are let go of when
//! the proxy closes (a supervisor restart or hand-over) without failing a single request.
//!
//! Closing never cuts a connection between two requests of an active client, which would race
//! with the client's next request already on the wire: from [`Clients::close`] on, every response
//! carries `Connection: close`, so each client reconnects after its next answer (to the listening
//! socket, which the next supervisor serves). Only a connection idle for [`IDLE_GRACE`] after that
//! is closed by us, and at the deadline every remaining one is shut down gracefully.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderValue, CONNECTION};
use hyper::{Response, StatusCode};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// After the close began, a connection that sent no request for this long is closed: its client
/// is not one with a request about to arrive.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// After the deadline, how long graceful shutdowns get to finish their last response.
const SETTLE: Duration = Duration::from_secs(2);

/// Every open client connection of one proxy.
#[derive(Debug, Default)]
pub(super) struct Clients {
    open: AtomicUsize,
    /// Woken whenever a connection ends.
    ended: Notify,
    /// Set by `close`: responses say `Connection: close` and idle connections are closed.
    closing: CancellationToken,
    /// Set at the deadline of `close`: every remaining connection is shut down.
    cut: CancellationToken,
}

/// One client connection as [`Clients`] counts it; dropping it counts the connection as ended.
#[derive(Debug)]
pub(super) struct Open {
    clients: Arc<Clients>,
    /// Bumped by every request, so the closing connection can tell whether its client is active.
    requests: watch::Sender<u64>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.clients.open.fetch_sub(1, Ordering::SeqCst);
        self.clients.ended.notify_waiters();
    }
}

impl Clients {
    /// Counts a new connection until the returned guard drops.
    pub(super) fn open(self: &Arc<Self>) -> Arc<Open> {
        self.open.fetch_add(1, Ordering::SeqCst);
        Arc::new(Open {
            clients: self.clone(),
            requests: watch::Sender::new(0),
        })
    }

    /// Begins the close: from now on every response says `Connection: close`.
    pub(super) fn begin_close(&self) {
        self.closing.cancel();
    }

    /// Begins the close and waits until every connection ended or `timeout` passed; then shuts
    /// the rest down and returns how many were still open.
    pub(super) async fn close(&self, timeout: Duration) -> u64 {
        self.closing.cancel();
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

impl Open {
    /// Notes a request, and marks its response as the connection's last once the close began.
    pub(super) fn answer<B>(&self, mut response: Response<B>) -> Response<B> {
        self.requests.send_modify(|n| *n += 1);
        // A 101 hands the connection to a tunnel: its own `Connection: upgrade` must stay.
        if self.clients.closing.is_cancelled()
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// Drives `conn` to its end; once the close began, shuts it down (gracefully: a response in
    /// progress still goes out) when its client stays idle for [`IDLE_GRACE`] or at the deadline.
    pub(super) async fn serve<C, T, E>(
        &self,
        conn: C,
        graceful_shutdown: impl Fn(&mut C),
    ) -> Result<T, E>
    where
        C: Future<Output = Result<T, E>> + Unpin,
    {
        let mut conn = conn;
        tokio::select! {
            result = &mut conn => return result,
            () = self.clients.closing.cancelled() => {}
        }
        let mut requests = self.requests.subscribe();
        loop {
            tokio::select! {
                result = &mut conn => return result,
                () = self.clients.cut.cancelled() => break,
                changed = requests.changed() => if changed.is_err() { break },
                () = tokio::time::sleep(IDLE_GRACE) => break,
            }
        }
        graceful_shutdown(&mut conn);
        conn.await
    }
}
