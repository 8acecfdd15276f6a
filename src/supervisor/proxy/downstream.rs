//! The proxy's downstream side: the client connections it accepted, as a whole. How many are
//! open, against the app's `max_connections` and the process's budget (`room`); which one to
//! close when there is no room for another; and how they are let go of when the proxy closes (a
//! supervisor restart or hand-over) without failing a single request.
//!
//! No room: like nginx out of connections, the oldest idle connection (no request in progress,
//! open for at least [`EVICT_GRACE`]) is closed to make room; with none idle, new connections
//! wait in the listen backlog until one ends, as under HAProxy's `maxconn`. A request in progress
//! is never cut to make room.
//!
//! Closing never cuts a connection between two requests of an active client, which would race
//! with the client's next request already on the wire: from [`Downstream::close`] on, every
//! response carries `Connection: close`, so each client reconnects after its next answer (to the
//! listening socket, which the next supervisor serves). Only a connection idle for [`IDLE_GRACE`]
//! after that is closed by us, and at the deadline every remaining one is shut down gracefully.
//!
//! `serve` drives each one: it also closes the connections nobody uses (no request begun
//! for `idle_timeout` and none in progress: an idle keep-alive connection, or a client too slow
//! to finish its request head) and cuts those whose client stopped taking its response.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::limits::ClientLimits;
use super::pace::SendState;
use super::room::{self, Budget};

/// After the close began, a connection that sent no request for this long is closed: its client
/// is not one with a request about to arrive.
pub(super) const IDLE_GRACE: Duration = Duration::from_secs(1);

/// After the deadline, how long graceful shutdowns get to finish their last response.
const SETTLE: Duration = Duration::from_secs(2);

/// A connection younger than this is not closed to make room: its first request may be on its
/// way (a burst of new clients then waits in the backlog rather than losing requests).
pub(super) const EVICT_GRACE: Duration = Duration::from_secs(1);

/// With no room, how often an accept loop looks again for a connection gone idle meanwhile
/// (it is woken at once when a connection ends).
const RECHECK: Duration = Duration::from_secs(1);

/// Every open downstream (client) connection of one proxy.
#[derive(Debug)]
pub(super) struct Downstream {
    open: AtomicUsize,
    /// Woken whenever a connection ends.
    ended: Notify,
    /// Set by `close`: responses say `Connection: close` and idle connections are closed.
    pub(super) closing: CancellationToken,
    /// `closing` as a plain flag, read on every response and every wake of a connection (the
    /// token's own check takes a lock).
    pub(super) closing_flag: AtomicBool,
    /// Set at the deadline of `close`: every remaining connection is shut down.
    pub(super) cut: CancellationToken,
    /// Per worker, the connections its event loop serves, to find one to close for room. Each
    /// is locked by its own worker as connections come and go, by others only when full.
    seats: Box<[Mutex<Seats>]>,
    /// The process's connections, all proxies together.
    budget: &'static Budget,
    /// An accept loop found no room: said once, until the connections fall an eighth below.
    full: AtomicBool,
}

/// The connections of one worker, each in a slot that stays its own until it ends.
#[derive(Debug, Default)]
struct Seats {
    taken: Vec<Option<Arc<Conn>>>,
    free: Vec<usize>,
}

/// A connection's place among the ones that may be closed for room, until dropped.
pub(super) struct Seat<'a> {
    downstream: &'a Downstream,
    worker: usize,
    index: usize,
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        let mut seats = lock(&self.downstream.seats[self.worker]);
        seats.taken[self.index] = None;
        seats.free.push(self.index);
    }
}

/// One accepted (downstream) connection as [`Downstream`] keeps track of it (the socket itself
/// is hyper's); dropping it counts the connection as ended.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) downstream: Arc<Downstream>,
    /// Woken by every answer once the close began, so the closing connection can tell whether
    /// its client is active.
    pub(super) answered: Notify,
    /// Requests begun, for the idle check.
    pub(super) begun: AtomicU64,
    /// Requests begun and not yet answered to their last byte.
    pub(super) active: AtomicUsize,
    /// The proxy's limits when the connection was accepted.
    pub(super) limits: ClientLimits,
    /// How the client takes its responses (`send_timeout`).
    pub(super) send: SendState,
    pub(super) born: Instant,
    /// Set when the connection is to be closed to make room, and `evicted` woken.
    pub(super) evict: AtomicBool,
    pub(super) evicted: Notify,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.downstream.open.fetch_sub(1, Ordering::SeqCst);
        self.downstream.budget.give_back();
        self.downstream.ended.notify_waiters();
    }
}

impl Downstream {
    /// The clients of a proxy with `workers` event loops, counted against the process's budget.
    pub(super) fn new(workers: usize) -> Downstream {
        Downstream {
            open: AtomicUsize::new(0),
            ended: Notify::new(),
            closing: CancellationToken::new(),
            closing_flag: AtomicBool::new(false),
            cut: CancellationToken::new(),
            seats: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
            budget: room::budget(),
            full: AtomicBool::new(false),
        }
    }

    /// Counts a new connection until the returned guard drops.
    pub(super) fn open(self: &Arc<Self>, limits: ClientLimits) -> Arc<Conn> {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.budget.take();
        let born = Instant::now();
        Arc::new(Conn {
            downstream: self.clone(),
            answered: Notify::new(),
            begun: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            limits,
            send: SendState::new(born),
            born,
            evict: AtomicBool::new(false),
            evicted: Notify::new(),
        })
    }

    /// How many connections are open.
    pub(super) fn count(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Puts `conn`, served by `worker`, among the connections that may be closed for room.
    pub(super) fn seat(&self, worker: usize, conn: &Arc<Conn>) -> Seat<'_> {
        let worker = worker % self.seats.len();
        let mut seats = lock(&self.seats[worker]);
        let index = match seats.free.pop() {
            Some(index) => {
                seats.taken[index] = Some(conn.clone());
                index
            }
            None => {
                seats.taken.push(Some(conn.clone()));
                seats.taken.len() - 1
            }
        };
        Seat {
            downstream: self,
            worker,
            index,
        }
    }

    fn full(&self, max: usize) -> bool {
        self.open.load(Ordering::Relaxed) >= max || self.budget.full()
    }

    /// An eighth below both limits.
    fn relieved(&self, max: usize) -> bool {
        self.open.load(Ordering::Relaxed) < max - max / 8 && self.budget.relieved()
    }

    /// Returns once this proxy may take one more connection: fewer than `max` open, and room in
    /// the process's budget. Else it closes the oldest idle connection to make room, or with
    /// none idle waits for one to end, while new connections wait in the listen backlog.
    pub(super) async fn wait_for_room(&self, max: usize, addr: SocketAddr) {
        if !self.full(max) && !self.full.load(Ordering::Relaxed) {
            return;
        }
        loop {
            // Made before the check: an end in between still wakes it.
            let ended = self.ended.notified();
            if !self.full(max) {
                // Said once the pressure is off, not at each connection let in at the limit.
                if self.relieved(max) && self.full.swap(false, Ordering::Relaxed) {
                    tracing::info!("proxy on {addr}: room for new connections again");
                }
                return;
            }
            if !self.full.swap(true, Ordering::Relaxed) {
                let open = self.count();
                let why = if open >= max {
                    format!("{open} client connections open, its max_connections")
                } else {
                    format!(
                        "the process's {} client connections (from its limit on open files) in use",
                        self.budget.limit()
                    )
                };
                tracing::warn!(
                    "proxy on {addr}: {why}: closing idle connections to make room, else new ones wait in the listen backlog"
                );
            }
            self.make_room(ended, RECHECK).await;
        }
    }

    /// After an accept failed for want of descriptors or memory (which the budget should have
    /// spared): closes the oldest idle connection and waits for a connection to end, or `pause`.
    pub(super) async fn starved(&self, pause: Duration) {
        self.make_room(self.ended.notified(), pause).await;
    }

    /// Closes the oldest idle connection, then waits for one of this proxy to end (`ended`, made
    /// before the caller looked), or of any proxy while the budget is full, or for `pause`.
    async fn make_room(&self, ended: Notified<'_>, pause: Duration) {
        self.evict_oldest_idle();
        let budget_full = self.budget.full();
        tokio::select! {
            () = ended => {}
            () = self.budget.freed(), if budget_full => {}
            () = tokio::time::sleep(pause) => {}
        }
    }

    /// Asks the oldest idle connection (no request in progress, older than [`EVICT_GRACE`]) of
    /// any worker to close, if there is one.
    fn evict_oldest_idle(&self) {
        let now = Instant::now();
        let mut oldest: Option<Arc<Conn>> = None;
        for seats in self.seats.iter() {
            let seats = lock(seats);
            for conn in seats.taken.iter().flatten() {
                let idle = conn.active.load(Ordering::Relaxed) == 0
                    && !conn.evict.load(Ordering::Relaxed)
                    && now.duration_since(conn.born) >= EVICT_GRACE;
                if idle && oldest.as_ref().is_none_or(|o| conn.born < o.born) {
                    oldest = Some(conn.clone());
                }
            }
        }
        if let Some(conn) = oldest {
            conn.evict.store(true, Ordering::Relaxed);
            conn.evicted.notify_one();
        }
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
pub(super) struct Active(Arc<Conn>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Conn {
    /// Resolves at the deadline of the proxy's close: a tunnel (which keeps its connection
    /// counted as open) ends then.
    pub(super) async fn cut(&self) {
        self.downstream.cut.cancelled().await;
    }

    /// Notes a request as begun: the connection is not idle until the returned guard drops.
    pub(super) fn begin(self: &Arc<Self>) -> Active {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }
}

/// The connections and tunnels open on one worker thread (see `workers`): the accept loops
/// balance on it, and after `shutdown` the worker ends once none is left. On a cache line of its
/// own: each worker writes its own count on every connection.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(super) struct OpenCount {
    pub(super) count: AtomicUsize,
    pub(super) none_left: Notify,
}

/// Counts one connection or tunnel as open until dropped.
#[derive(Debug)]
pub(super) struct OpenGuard(Arc<OpenCount>);

impl OpenGuard {
    pub fn new(open: Arc<OpenCount>) -> OpenGuard {
        open.count.fetch_add(1, Ordering::AcqRel);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// The registry lock: a panic while holding it leaves plain data behind, still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The accepted (downstream) connection a request came on, as each of its requests sees it:
/// computed once per connection rather than per request.
#[derive(Debug, Clone)]
pub(super) struct Accepted {
    /// The client's address (or the one its PROXY protocol header gave), for `X-Forwarded-For`.
    pub client_ip: http::HeaderValue,
    /// The worker thread serving the connection: its requests use that worker's pools.
    pub worker: usize,
    /// The worker's open connections, which a WebSocket tunnel joins.
    pub open_count: Arc<OpenCount>,
    /// The connection as the proxy's downstream side counts it: a tunnel keeps it counted, so
    /// closing the proxy waits for the tunnel until its deadline (a hand-over: the app's drain
    /// timeout).
    pub conn: Arc<Conn>,
    /// Over TLS: `X-Forwarded-Proto: https`, and the app's HSTS on its answers.
    pub tls: bool,
    /// HTTP/2: many requests at once on the connection, which ends with GOAWAY.
    pub multiplexed: bool,
}
