//! One backend as the proxy keeps it: its counters, its in-flight tracking (what `drain` waits
//! on), the switch that cuts its remaining connections, and its pools of keep-alive connections,
//! one per worker thread so that a request uses a connection driven by its own event loop.
//!
//! Everything a request touches here is an atomic or a very short critical section (a worker's
//! pool lock is taken by that worker only, and by `drain` once), so requests to the same instance
//! never wait on each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::client::{self, Conn, ExchangeError, Head, Outgoing};
use super::{Backend, BackendStats};

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
}

#[derive(Debug)]
pub(super) struct BackendState {
    pub backend: Arc<Backend>,
    requests: AtomicU64,
    errors_5xx: AtomicU64,
    failed_connects: AtomicU64,
    in_flight: AtomicU64,
    latency: Histogram,
    /// Woken when `in_flight` drops to zero.
    idle: Notify,
    /// Cancelled by `drain` at its deadline: every request and tunnel on this backend ends.
    pub cut: CancellationToken,
    /// Idle connections, one pool per worker thread.
    pools: Box<[Pool]>,
}

/// One worker's idle connections and its view of `cut`, on a cache line of its own so that
/// workers do not slow each other down by writing next to each other.
#[derive(Debug)]
#[repr(align(128))]
struct Pool {
    idle: Mutex<Vec<Conn>>,
    /// A child of `cut`: the requests of one worker wait on it, so that they do not all register
    /// with (and contend for) one token.
    cut: CancellationToken,
}

impl BackendState {
    pub fn new(backend: Arc<Backend>, workers: usize) -> BackendState {
        let cut = CancellationToken::new();
        let pools = (0..workers.max(1))
            .map(|_| Pool {
                idle: Mutex::new(Vec::new()),
                cut: cut.child_token(),
            })
            .collect();
        BackendState {
            backend,
            requests: AtomicU64::new(0),
            errors_5xx: AtomicU64::new(0),
            failed_connects: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            latency: Histogram::default(),
            idle: Notify::new(),
            cut,
            pools,
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> BackendStats {
        BackendStats {
            id: self.backend.id.clone(),
            version: self.backend.version.clone(),
            requests: self.requests.load(Ordering::Relaxed),
            errors_5xx: self.errors_5xx.load(Ordering::Relaxed),
            failed_connects: self.failed_connects.load(Ordering::Relaxed),
            in_flight: self.in_flight(),
            p50_us: self.latency.quantile(0.50),
            p99_us: self.latency.quantile(0.99),
        }
    }

    /// Records an answered request: its status class and time to the response head.
    pub fn record(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors_5xx.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.record(latency);
    }

    /// Records a request that reached the instance but got no answer (it died or broke the
    /// connection): a server error as far as the canary analysis is concerned.
    pub fn record_broken(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.errors_5xx.fetch_add(1, Ordering::Relaxed);
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

    /// Closes the idle keep-alive connections (after a drain: the instance is going away).
    pub fn close_idle(&self) {
        for pool in &self.pools {
            if let Ok(mut pool) = pool.idle.lock() {
                pool.clear();
            }
        }
    }

    /// Puts a connection whose exchange finished cleanly back for `worker`'s next request.
    pub fn give_back(&self, worker: usize, conn: Conn) {
        if self.cut.is_cancelled() {
            return;
        }
        if let Ok(mut pool) = self.pool(worker).lock() {
            if pool.len() < MAX_IDLE {
                pool.push(conn);
            }
        }
    }

    fn pool(&self, worker: usize) -> &Mutex<Vec<Conn>> {
        &self.pools[worker % self.pools.len()].idle
    }

    /// `cut` as `worker`'s requests wait on it.
    pub fn cut_of(&self, worker: usize) -> &CancellationToken {
        &self.pools[worker % self.pools.len()].cut
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
                        self.failed_connects.fetch_add(1, Ordering::Relaxed);
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
                    self.failed_connects.fetch_add(1, Ordering::Relaxed);
                    return Err(SendError::Connect(err));
                }
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
    ) && req.replay().is_some()
}

/// Marks one request or tunnel as in flight on a backend until dropped.
#[derive(Debug)]
pub(super) struct InFlight(pub Arc<BackendState>);

impl InFlight {
    pub fn new(state: Arc<BackendState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Latency histogram with two buckets per power of two of microseconds: fixed memory, lock-free
/// recording, and quantiles within ~25 % — enough to compare a canary with the stable release.
#[derive(Debug)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS],
}

const BUCKETS: usize = 64;

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

    /// The upper bound of the bucket holding the `q` quantile, in microseconds (0 if empty).
    fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return upper_bound(i);
            }
        }
        upper_bound(BUCKETS - 1)
    }
}

fn bucket_of(us: u64) -> usize {
    if us < 2 {
        return 0;
    }
    let octave = 63 - us.leading_zeros() as usize;
    let half = ((us >> (octave - 1)) & 1) as usize;
    (octave * 2 + half).min(BUCKETS - 1)
}

fn upper_bound(bucket: usize) -> u64 {
    if bucket < 2 {
        return 2;
    }
    let (octave, half) = (bucket / 2, bucket % 2);
    let step = 1u64 << (octave - 1).min(62);
    (1u64 << octave.min(62)) + step * (half as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        for us in [1, 2, 3, 5, 100, 150, 1000, 4097, 1_000_000] {
            let bucket = bucket_of(us);
            assert!(upper_bound(bucket) >= us, "{us} above its bucket's bound");
            assert!(upper_bound(bucket) <= us * 2, "{us}: bound too loose");
        }
    }

    #[test]
    fn quantiles_come_from_the_right_buckets() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(100));
        }
        h.record(Duration::from_millis(50));
        h.record(Duration::from_millis(50));
        assert!(
            (100..=128).contains(&h.quantile(0.5)),
            "{}",
            h.quantile(0.5)
        );
        assert!((100..=128).contains(&h.quantile(0.98)));
        assert!(h.quantile(0.99) >= 50_000);
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }
}
