//! One backend (an instance) as the supervisor names it to the proxy (`Backend`), as the proxy
//! keeps it (`BackendState`: its counters, its in-flight tracking (what `drain` waits on), the
//! switch that cuts its remaining connections, and its pools of keep-alive connections, one per
//! worker thread so that a request uses a connection driven by its own event loop), and as its
//! counters are read back (`BackendStats`, from `counters`). Each counter is kept per `Slot`
//! (the backend's place in the route when the request reached it), so that the admin address's
//! metrics give a canary's traffic apart from the same instances' traffic once promoted.
//!
//! Everything a request touches here is an atomic or a very short critical section (a worker's
//! pool lock is taken by that worker only, and by `drain` and the pool's sweep now and then), so
//! requests to the same instance never wait on each other.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::counters::{BackendStats, Slot, SlotCounters, SlotStats};
use crate::supervisor::proxy::head::Head;
use crate::supervisor::proxy::histogram::{quantile, Histogram};
use crate::supervisor::proxy::pool::{Pool, Taken};
use crate::supervisor::proxy::upstream::{self, Conn, ExchangeError, Outgoing};
use crate::supervisor::proxy::upstream_h2::H2Conn;

/// One instance as the proxy sees it. Shared between the route and its counters.
#[derive(Debug)]
pub struct Backend {
    /// Instance id, e.g. `shop-1.4.2-0`.
    pub id: String,
    /// Release version the instance runs.
    pub version: String,
    pub addr: SocketAddr,
}

/// Why a request could not be answered by this backend.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made; the request was not sent and can go to another instance.
    Connect(std::io::Error),
    /// The request was sent (at least in part) and the exchange failed.
    Exchange(std::io::Error),
    /// The client's request body failed (too slow, broken, cut off): the client's fault, not
    /// the instance's.
    Client(std::io::Error),
    /// `drain` cut this backend's connections at its deadline.
    Cut,
}

#[derive(Debug)]
pub(crate) struct BackendState {
    pub backend: Arc<Backend>,
    /// Woken when nothing is in flight any more.
    idle: Notify,
    /// Cancelled by `drain` at its deadline (through `cut_all`): every request and tunnel on
    /// this backend ends.
    pub cut: CancellationToken,
    /// `cut` as a plain flag, read as each request gives its connection back (the token's own
    /// check takes a lock).
    was_cut: AtomicBool,
    /// The instance has answered with the `X-Request-Id` it was sent: from then on an answer
    /// with another id is one it wrote for another request.
    echoes_ids: AtomicBool,
    /// What each worker thread writes on every request; `stats` and `in_flight` add them up.
    shards: Box<[Shard]>,
}

/// One worker's share of a backend: its idle connections, its counters and its view of `cut`,
/// on cache lines of its own, so that workers never write where another one does (a counter
/// shared by all was a cache line passed between cores on every request).
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    pool: Mutex<Pool>,
    /// A child of `cut`: the requests of one worker wait on it, so that they do not all register
    /// with (and contend for) one token.
    cut: CancellationToken,
    in_flight: AtomicU64,
    /// By [`Slot`]: a request adds to its slot's counters only, as many atomic adds as before
    /// slots were told apart (the request count is the sum of the classes).
    slots: [SlotCounters; 2],
    /// The worker's HTTP/2 connection, for an app with `upstream: h2c` or `h2`.
    h2: H2Conn,
}

/// How a request came to this backend, for the counters: the canary analysis judges only the
/// traffic the route sent, not what a client pinned to a side with the tester header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Routed {
    ByRoute,
    Pinned,
}

impl BackendState {
    pub fn new(backend: Arc<Backend>, workers: usize) -> BackendState {
        let cut = CancellationToken::new();
        let shards = (0..workers.max(1))
            .map(|_| Shard {
                pool: Mutex::default(),
                cut: cut.child_token(),
                h2: H2Conn::default(),
                in_flight: AtomicU64::new(0),
                slots: Default::default(),
            })
            .collect();
        BackendState {
            backend,
            idle: Notify::new(),
            cut,
            was_cut: AtomicBool::new(false),
            echoes_ids: AtomicBool::new(false),
            shards,
        }
    }

    fn shard(&self, worker: usize) -> &Shard {
        &self.shards[worker % self.shards.len()]
    }

    fn counters(&self, worker: usize, slot: Slot) -> &SlotCounters {
        &self.shard(worker).slots[slot as usize]
    }

    pub fn in_flight(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| shard.in_flight.load(Ordering::SeqCst))
            .sum()
    }

    /// Counts one more request or tunnel in flight on `worker`'s count (see `route::InFlight`).
    #[inline]
    pub fn enter(&self, worker: usize) {
        self.shard(worker).in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts one request or tunnel of `worker`'s as ended; wakes `wait_idle` once none is left.
    #[inline]
    pub fn leave(&self, worker: usize) {
        // SeqCst: of two workers dropping their last request at once, at least one sees the
        // other's count at zero and wakes the drain.
        let was_last_here = self.shard(worker).in_flight.fetch_sub(1, Ordering::SeqCst) == 1;
        if was_last_here && self.in_flight() == 0 {
            self.idle.notify_waiters();
        }
    }

    /// One slot's counters, added up over the workers.
    fn slot_stats(&self, slot: Slot) -> SlotStats {
        fn of(shard: &Shard, slot: Slot) -> &SlotCounters {
            &shard.slots[slot as usize]
        }
        let sum = |counter: &dyn Fn(&SlotCounters) -> &AtomicU64| -> u64 {
            self.shards
                .iter()
                .map(|shard| counter(of(shard, slot)).load(Ordering::Relaxed))
                .sum()
        };
        let latency: Vec<&Histogram> = self.shards.iter().map(|s| &of(s, slot).latency).collect();
        SlotStats {
            classes: std::array::from_fn(|class| sum(&|c| &c.classes[class])),
            quiet: sum(&|c| &c.quiet),
            failed_connects: sum(&|c| &c.failed_connects),
            client_aborts: sum(&|c| &c.client_aborts),
            pinned_requests: sum(&|c| &c.pinned_requests),
            pinned_errors_5xx: sum(&|c| &c.pinned_errors_5xx),
            response_bytes: sum(&|c| &c.response_bytes),
            latency: Histogram::counts(&latency),
        }
    }

    pub fn stats(&self) -> BackendStats {
        let slots = Slot::ALL.map(|slot| self.slot_stats(slot));
        let mut both = slots[0].clone();
        both.add(&slots[1]);
        BackendStats {
            id: self.backend.id.clone(),
            version: self.backend.version.clone(),
            requests: both.requests(),
            errors_5xx: both.classes[4],
            failed_connects: both.failed_connects,
            client_aborts: both.client_aborts,
            pinned_requests: both.pinned_requests,
            pinned_errors_5xx: both.pinned_errors_5xx,
            in_flight: self.in_flight(),
            idle_connections: self.shards.iter().map(|s| lock(&s.pool).len() as u64).sum(),
            p50_us: quantile(&both.latency, 0.50),
            p99_us: quantile(&both.latency, 0.99),
            latency: both.latency,
            slots,
            routed_as: None,
        }
    }

    /// Records an answered request: its status class and time to the response head.
    pub fn record(
        &self,
        worker: usize,
        routed: Routed,
        slot: Slot,
        status: u16,
        latency: Duration,
    ) {
        let counters = self.counters(worker, slot);
        if routed == Routed::Pinned {
            counters.pinned_requests.fetch_add(1, Ordering::Relaxed);
            if status >= 500 {
                counters.pinned_errors_5xx.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        counters.classes[class].fetch_add(1, Ordering::Relaxed);
        counters.latency.record(latency);
    }

    /// Adds the body bytes of one answer sent on to its client (once per response, at its end).
    pub fn record_sent(&self, worker: usize, slot: Slot, bytes: u64) {
        if bytes > 0 {
            self.counters(worker, slot)
                .response_bytes
                .fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Records a connection (TCP mode) on which neither side said a word: counted, not judged.
    pub fn record_quiet(&self, worker: usize, slot: Slot) {
        self.counters(worker, slot)
            .quiet
            .fetch_add(1, Ordering::Relaxed);
    }

    /// `worker`'s HTTP/2 connection to the instance (`upstream: h2c` or `h2`).
    pub fn h2(&self, worker: usize) -> &H2Conn {
        &self.shard(worker).h2
    }

    /// Records a connection to the instance that could not be made.
    pub fn record_failed_connect(&self, worker: usize, slot: Slot) {
        self.counters(worker, slot)
            .failed_connects
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Records a request that reached the instance but got no usable answer (it died, broke the
    /// connection, or answered another request): a server error as far as the canary analysis
    /// is concerned.
    pub fn record_broken(&self, worker: usize, routed: Routed, slot: Slot) {
        let counters = self.counters(worker, slot);
        match routed {
            // A 5xx is a request: the count is the sum of the classes.
            Routed::ByRoute => {
                counters.classes[4].fetch_add(1, Ordering::Relaxed);
            }
            Routed::Pinned => {
                counters.pinned_requests.fetch_add(1, Ordering::Relaxed);
                counters.pinned_errors_5xx.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records a request its client broke off (an upload aborted, a malformed body, too slow):
    /// shown, never judged against the instance.
    pub fn record_client_abort(&self, worker: usize, slot: Slot) {
        self.counters(worker, slot)
            .client_aborts
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Notes that the instance echoed a request's id.
    pub fn saw_id_echoed(&self) {
        // Read first: the flag is read by every request, and a write would pass its cache
        // line between the cores.
        if !self.echoes_ids.load(Ordering::Relaxed) {
            self.echoes_ids.store(true, Ordering::Relaxed);
        }
    }

    pub fn echoes_ids(&self) -> bool {
        self.echoes_ids.load(Ordering::Relaxed)
    }

    /// Waits until nothing is in flight; returns false if `until` passed first.
    pub async fn wait_idle(&self, until: Instant) -> bool {
        loop {
            // Registered before the check, so a drop to zero in between is not missed.
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return true;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => return self.in_flight() == 0,
            }
        }
    }

    /// Ends every request and tunnel on this backend (a drain's deadline passed).
    pub fn cut_all(&self) {
        self.was_cut.store(true, Ordering::Relaxed);
        self.cut.cancel();
    }

    /// Closes the idle keep-alive connections (after a drain: the instance is going away).
    pub fn close_idle(&self) {
        for shard in &self.shards {
            lock(&shard.pool).clear();
        }
    }

    /// Puts a connection whose exchange finished cleanly back for `worker`'s next request, and
    /// makes sure a sweep will close it once it has been idle too long.
    pub fn give_back(self: &Arc<Self>, worker: usize, conn: Conn) {
        if self.was_cut.load(Ordering::Relaxed) {
            return;
        }
        let mut pool = lock(&self.shard(worker).pool);
        if !pool.put(conn, Instant::now()) || pool.sweeping {
            return;
        }
        // Outside a runtime (a worker shutting down) nothing sweeps: the pool goes with it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            pool.sweeping = true;
            runtime.spawn(self.clone().sweep(worker));
        }
    }

    /// Closes `worker`'s idle connections as they expire, for as long as it has any: no timer
    /// runs for an empty pool.
    async fn sweep(self: Arc<Self>, worker: usize) {
        loop {
            let next = {
                let mut pool = lock(&self.shard(worker).pool);
                match pool.expire(Instant::now()) {
                    Some(next) => next,
                    None => {
                        // Under the lock, so a connection put back meanwhile starts a new sweep.
                        pool.sweeping = false;
                        return;
                    }
                }
            };
            tokio::time::sleep_until(next).await;
        }
    }

    /// `cut` as `worker`'s requests wait on it.
    pub fn cut_of(&self, worker: usize) -> &CancellationToken {
        &self.shard(worker).cut
    }

    /// Sends `req` on one of `worker`'s pooled connections or a new one, and reads the response
    /// head. A pooled connection that turns out to be closed (before the request, or by closing
    /// without a byte of answer, the race every keep-alive client has) is dropped and the request
    /// sent again on a new connection while that is safe, so a stale keep-alive connection never
    /// fails a request: always when nothing of it was accepted, a request that may be sent twice
    /// also when the instance may have seen it. `fresh`: on a new connection only.
    pub async fn send(
        &self,
        worker: usize,
        slot: Slot,
        req: &mut Outgoing,
        fresh: bool,
    ) -> Result<(Head, Conn), SendError> {
        let mut pooled_ok = !fresh;
        loop {
            let pooled = pooled_ok
                .then(|| lock(&self.shard(worker).pool).take(Instant::now()))
                .flatten();
            let (mut conn, idle_for) = match pooled {
                Some(Taken { conn, idle_for }) => (conn, Some(idle_for)),
                None => match Conn::connect(self.backend.addr).await {
                    Ok(conn) => (conn, None),
                    Err(err) => {
                        self.record_failed_connect(worker, slot);
                        return Err(SendError::Connect(err));
                    }
                },
            };
            let reused = idle_for.is_some();
            let outcome = tokio::select! {
                outcome = upstream::exchange(&mut conn, req, reused) => outcome,
                _ = self.cut_of(worker).cancelled() => return Err(SendError::Cut),
            };
            match outcome {
                Ok(head) => return Ok((head, conn)),
                Err(ExchangeError::Unsent(_)) if reused => {}
                Err(ExchangeError::Closed { refused })
                    if reused && req.resendable() && (refused || replayable(req)) =>
                {
                    tracing::debug!(
                        backend = %self.backend.id,
                        "a pooled connection was closed by the instance; sending again on a new one"
                    );
                    if let Some(idle_for) = idle_for.filter(|_| refused) {
                        lock(&self.shard(worker).pool).closed_after(idle_for);
                    }
                    // Its neighbours in the pool are as old: the next try is on a new one.
                    pooled_ok = false;
                }
                Err(err @ ExchangeError::Closed { .. }) => {
                    // Not to be sent again, but the pool learns how old a connection the
                    // instance closes, so that the next requests do not race it.
                    if let Some(idle_for) = idle_for {
                        lock(&self.shard(worker).pool).closed_after(idle_for);
                    }
                    return Err(SendError::Exchange(err.into_io()));
                }
                Err(ExchangeError::Unsent(err)) => {
                    self.record_failed_connect(worker, slot);
                    return Err(SendError::Connect(err));
                }
                Err(ExchangeError::Client(err)) => return Err(SendError::Client(err)),
                Err(err) => return Err(SendError::Exchange(err.into_io())),
            }
        }
    }
}

/// Safe to send twice (RFC 9110 section 9.2.1) and without a body.
fn replayable(req: &Outgoing) -> bool {
    matches!(
        req.method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) && req.bodiless()
}

/// A lock whose data stays usable after a panic elsewhere (plain lists and counters).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
