//! One backend as the proxy keeps it: its counters, its in-flight tracking (what `drain` waits
//! on), the switch that cuts its remaining connections, and its pools of keep-alive connections,
//! one per worker thread so that a request uses a connection driven by its own event loop.
//!
//! Everything a request touches here is an atomic or a very short critical section (a worker's
//! pool lock is taken by that worker only, and by `drain` once), so requests to the same instance
//! never wait on each other.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::client::{self, Conn, ExchangeError, Outgoing};
use super::head::Head;
use super::{Backend, BackendStats, Table};

/// Idle keep-alive connections kept per instance and worker; beyond that they are closed after use.
const MAX_IDLE: usize = 512;

/// Why a request could not be answered by this backend.
#[derive(Debug)]
pub(super) enum SendError {
    /// No connection could be made; the request was not sent and can go to another instance.
    Connect(std::io::Error),
    /// The request was sent (at least in part) and the exchange failed.
    Exchange(std::io::Error),
    /// `drain` cut this backend's connections at its deadline.
    Cut,
    /// The client's request body failed (too slow, broken): the client's fault, not the
    /// instance's.
    Client(std::io::Error),
}

#[derive(Debug)]
pub(super) struct BackendState {
    pub backend: Arc<Backend>,
    /// Woken when nothing is in flight any more.
    idle: Notify,
    /// Cancelled by `drain` at its deadline (through `cut_all`): every request and tunnel on
    /// this backend ends.
    pub cut: CancellationToken,
    /// `cut` as a plain flag, read as each request gives its connection back (the token's own
    /// check takes a lock).
    was_cut: AtomicBool,
    /// What each worker thread writes on every request; `stats` and `in_flight` add them up.
    shards: Box<[Shard]>,
}

/// One worker's share of a backend: its idle connections, its counters and its view of `cut`,
/// on cache lines of its own, so that workers never write where another one does (a counter
/// shared by all was a cache line passed between cores on every request).
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    idle: Mutex<Vec<Conn>>,
    /// A child of `cut`: the requests of one worker wait on it, so that they do not all register
    /// with (and contend for) one token.
    cut: CancellationToken,
    requests: AtomicU64,
    errors_5xx: AtomicU64,
    failed_connects: AtomicU64,
    in_flight: AtomicU64,
    latency: Histogram,
}

impl BackendState {
    pub fn new(backend: Arc<Backend>, workers: usize) -> BackendState {
        let cut = CancellationToken::new();
        let shards = (0..workers.max(1))
            .map(|_| Shard {
                idle: Mutex::new(Vec::new()),
                cut: cut.child_token(),
                requests: AtomicU64::new(0),
                errors_5xx: AtomicU64::new(0),
                failed_connects: AtomicU64::new(0),
                in_flight: AtomicU64::new(0),
                latency: Histogram::default(),
            })
            .collect();
        BackendState {
            backend,
            idle: Notify::new(),
            cut,
            was_cut: AtomicBool::new(false),
            shards,
        }
    }

    fn shard(&self, worker: usize) -> &Shard {
        &self.shards[worker % self.shards.len()]
    }

    fn sum(&self, counter: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|shard| counter(shard).load(Ordering::SeqCst))
            .sum()
    }

    pub fn in_flight(&self) -> u64 {
        self.sum(|s| &s.in_flight)
    }

    pub fn stats(&self) -> BackendStats {
        let latency: Vec<&Histogram> = self.shards.iter().map(|s| &s.latency).collect();
        let counts = Histogram::counts(&latency);
        BackendStats {
            id: self.backend.id.clone(),
            version: self.backend.version.clone(),
            requests: self.sum(|s| &s.requests),
            errors_5xx: self.sum(|s| &s.errors_5xx),
            failed_connects: self.sum(|s| &s.failed_connects),
            in_flight: self.in_flight(),
            p50_us: quantile(&counts, 0.50),
            p99_us: quantile(&counts, 0.99),
            latency: counts,
        }
    }

    /// Records an answered request: its status class and time to the response head.
    pub fn record(&self, worker: usize, status: u16, latency: Duration) {
        let shard = self.shard(worker);
        shard.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            shard.errors_5xx.fetch_add(1, Ordering::Relaxed);
        }
        shard.latency.record(latency);
    }

    /// Records a connection (TCP mode) on which neither side said a word: counted, not judged.
    pub fn record_quiet(&self, worker: usize) {
        self.shard(worker).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a connection to the instance that could not be made (TCP mode).
    pub fn record_failed_connect(&self, worker: usize) {
        self.shard(worker)
            .failed_connects
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Records a request that reached the instance but got no answer (it died or broke the
    /// connection): a server error as far as the canary analysis is concerned.
    pub fn record_broken(&self, worker: usize) {
        let shard = self.shard(worker);
        shard.requests.fetch_add(1, Ordering::Relaxed);
        shard.errors_5xx.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until nothing is in flight; returns false if `until` passed first.
    pub async fn wait_idle(&self, until: tokio::time::Instant) -> bool {
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
            if let Ok(mut pool) = shard.idle.lock() {
                pool.clear();
            }
        }
    }

    /// Puts a connection whose exchange finished cleanly back for `worker`'s next request.
    pub fn give_back(&self, worker: usize, conn: Conn) {
        if self.was_cut.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut pool) = self.pool(worker).lock() {
            if pool.len() < MAX_IDLE {
                pool.push(conn);
            }
        }
    }

    fn pool(&self, worker: usize) -> &Mutex<Vec<Conn>> {
        &self.shard(worker).idle
    }

    /// `cut` as `worker`'s requests wait on it.
    pub fn cut_of(&self, worker: usize) -> &CancellationToken {
        &self.shard(worker).cut
    }

    fn take_idle(&self, worker: usize) -> Option<Conn> {
        self.pool(worker).lock().ok()?.pop()
    }

    /// Sends `req` on one of `worker`'s pooled connections or a new one, and reads the response
    /// head. A pooled connection that turns out to be closed (before the request, or by closing
    /// without a byte of answer, the race every keep-alive client has) is dropped and the request
    /// sent again on the next one while that is safe, so a stale keep-alive connection never
    /// fails a request.
    pub async fn send(&self, worker: usize, req: &mut Outgoing) -> Result<(Head, Conn), SendError> {
        loop {
            let (mut conn, fresh) = match self.take_idle(worker) {
                Some(conn) if conn.is_open() => (conn, false),
                Some(_) => continue,
                None => match Conn::connect(self.backend.addr).await {
                    Ok(conn) => (conn, true),
                    Err(err) => {
                        self.shard(worker)
                            .failed_connects
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(SendError::Connect(err));
                    }
                },
            };
            let outcome = tokio::select! {
                outcome = client::exchange(&mut conn, req) => outcome,
                _ = self.cut_of(worker).cancelled() => return Err(SendError::Cut),
            };
            match outcome {
                Ok(head) => return Ok((head, conn)),
                Err(ExchangeError::Unsent(_)) if !fresh => continue,
                // Sent but unanswered on a connection the instance may have been closing as it
                // went out: only a request that may be sent twice goes again.
                Err(ExchangeError::Closed) if !fresh && req.resendable() && replayable(req) => {
                    continue
                }
                Err(ExchangeError::Unsent(err)) => {
                    self.shard(worker)
                        .failed_connects
                        .fetch_add(1, Ordering::Relaxed);
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

/// Marks one request or tunnel as in flight on a backend (on `worker`'s count) until dropped.
/// It holds the backend through the worker's own copy of the route (`table`), whose reference
/// count only that worker writes.
#[derive(Debug)]
pub(super) struct InFlight {
    table: Arc<Table>,
    index: usize,
    worker: usize,
}

impl InFlight {
    pub fn new(table: Arc<Table>, index: usize, worker: usize) -> InFlight {
        let in_flight = InFlight {
            table,
            index,
            worker,
        };
        let shard = in_flight.state().shard(worker);
        shard.in_flight.fetch_add(1, Ordering::SeqCst);
        in_flight
    }

    pub fn state(&self) -> &BackendState {
        &self.table.backends[self.index]
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // SeqCst: of two workers dropping their last request at once, at least one sees the
        // other's count at zero and wakes the drain.
        let state = self.state();
        if state
            .shard(self.worker)
            .in_flight
            .fetch_sub(1, Ordering::SeqCst)
            == 1
            && state.in_flight() == 0
        {
            state.idle.notify_waiters();
        }
    }
}

/// Latency histogram, log-linear: [`SUB_BUCKETS`] buckets per power of two of microseconds (exact
/// below that many), so fixed memory, lock-free recording, and quantiles within 1/8 (12.5 %) —
/// fine enough to hold a canary's p99 to a `max_p99_ratio` of 1.2.
#[derive(Debug)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS],
}

/// log2 of the buckets per power of two.
const SUB_BITS: u32 = 3;
const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// Up to 2^40 µs (12 days): every latency a request can have.
const BUCKETS: usize = (40 - SUB_BITS as usize + 1) * SUB_BUCKETS;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The bucket counts of all of `histograms` together.
    fn counts(histograms: &[&Histogram]) -> Vec<u64> {
        (0..BUCKETS)
            .map(|i| {
                histograms
                    .iter()
                    .map(|h| h.buckets[i].load(Ordering::Relaxed))
                    .sum()
            })
            .collect()
    }
}

/// The upper bound of the bucket holding the `q` quantile of a histogram's bucket `counts` (as in
/// `BackendStats::latency`, or the difference of two readings), in microseconds; 0 if empty.
pub fn quantile(counts: &[u64], q: f64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            // Never 0, which means "no request".
            return upper_bound(i).max(1);
        }
    }
    upper_bound(BUCKETS - 1)
}

fn bucket_of(us: u64) -> usize {
    if us < SUB_BUCKETS as u64 {
        return us as usize;
    }
    // `us` is in [2^octave, 2^(octave+1)), split in SUB_BUCKETS equal steps.
    let octave = 63 - us.leading_zeros();
    let sub = ((us >> (octave - SUB_BITS)) as usize) & (SUB_BUCKETS - 1);
    let group = (octave - SUB_BITS + 1) as usize;
    (group * SUB_BUCKETS + sub).min(BUCKETS - 1)
}

/// The largest latency (in µs) that falls in `bucket`.
fn upper_bound(bucket: usize) -> u64 {
    if bucket < SUB_BUCKETS {
        return bucket as u64;
    }
    let (group, sub) = (bucket / SUB_BUCKETS, (bucket % SUB_BUCKETS) as u64);
    let octave = group as u32 + SUB_BITS - 1;
    let step = 1u64 << (octave - SUB_BITS);
    (1u64 << octave) + step * (sub + 1) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        let mut previous = None;
        for us in (0..20_000).chain([65_535, 65_536, 1_000_000, 86_400_000_000]) {
            let bucket = bucket_of(us);
            let bound = upper_bound(bucket);
            assert!(bound >= us, "{us} above its bucket's bound {bound}");
            assert!(
                bound <= us + us / 8,
                "{us}: bound {bound} more than 1/8 above"
            );
            if let Some((before, before_bucket)) = previous {
                assert!(
                    bucket >= before_bucket,
                    "{us} in a lower bucket than {before}"
                );
                if bucket > before_bucket && before + 1 == us {
                    assert_eq!(upper_bound(before_bucket), us - 1, "no gap below {us}");
                }
            }
            previous = Some((us, bucket));
        }
        assert_eq!(
            bucket_of(u64::MAX),
            BUCKETS - 1,
            "the longest fall in the last"
        );
    }

    #[test]
    fn a_p99_a_fifth_slower_is_told_apart() {
        let p99 = |ms| {
            let h = Histogram::default();
            for _ in 0..100 {
                h.record(Duration::from_millis(ms));
            }
            quantile(&Histogram::counts(&[&h]), 0.99) as f64
        };
        let ratio = p99(12) / p99(10);
        assert!(
            (1.15..=1.25).contains(&ratio),
            "12 ms against 10 ms: {ratio:.3}"
        );
    }

    #[test]
    fn quantiles_come_from_the_right_buckets() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(100));
        }
        h.record(Duration::from_millis(50));
        h.record(Duration::from_millis(50));
        let other = Histogram::default();
        other.record(Duration::from_micros(100));
        let both = [&h, &other];
        let q = |q| quantile(&Histogram::counts(&both), q);
        assert!((100..=112).contains(&q(0.5)), "{}", q(0.5));
        assert!((100..=112).contains(&q(0.98)));
        assert!(q(0.99) >= 50_000);
        assert_eq!(
            quantile(&Histogram::counts(&[&Histogram::default()]), 0.99),
            0
        );
    }
}
