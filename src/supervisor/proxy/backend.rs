//! One backend as the proxy keeps it: its counters, its in-flight tracking (what `drain` waits
//! on), the switch that cuts its remaining connections, and its pool of keep-alive connections.
//!
//! Everything a request touches here is an atomic or a very short critical section, so requests
//! to the same instance never wait on each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::body::RequestBody;
use super::{Backend, BackendStats};

/// How long a connect to an instance may take before it counts as failed (and is retried on
/// another one). Instances are local, so a slow connect means an overloaded or wedged one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle keep-alive connections kept per instance; beyond that they are closed after use.
const MAX_IDLE: usize = 512;

pub(super) type Sender = SendRequest<RequestBody>;

/// Why a request could not be answered by this backend.
#[derive(Debug)]
pub(super) enum SendError {
    /// No connection could be made; the request was not sent and is handed back for a retry.
    Connect(std::io::Error, Box<Request<RequestBody>>),
    /// The request was sent (at least in part) and the exchange failed.
    Exchange(hyper::Error),
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
    pool: Mutex<Vec<Sender>>,
}

impl BackendState {
    pub fn new(backend: Arc<Backend>) -> BackendState {
        BackendState {
            backend,
            requests: AtomicU64::new(0),
            errors_5xx: AtomicU64::new(0),
            failed_connects: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            latency: Histogram::default(),
            idle: Notify::new(),
            cut: CancellationToken::new(),
            pool: Mutex::new(Vec::new()),
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
            latency: self.latency.counts(),
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
        if let Ok(mut pool) = self.pool.lock() {
            pool.clear();
        }
    }

    /// Puts a connection whose exchange finished cleanly back for the next request.
    pub fn give_back(&self, sender: Sender) {
        if self.cut.is_cancelled() {
            return;
        }
        if let Ok(mut pool) = self.pool.lock() {
            if pool.len() < MAX_IDLE {
                pool.push(sender);
            }
        }
    }

    fn take_idle(&self) -> Option<Sender> {
        self.pool.lock().ok()?.pop()
    }

    /// Sends `req` on a pooled connection or a new one. A pooled connection that turns out to be
    /// closed hands the request back untouched and the next one is tried, so a stale keep-alive
    /// connection never fails a request.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Sender), SendError> {
        loop {
            let (mut sender, fresh) = match self.take_idle() {
                Some(sender) if !sender.is_closed() => (sender, false),
                Some(_) => continue,
                None => match self.connect().await {
                    Ok(sender) => (sender, true),
                    Err(err) => {
                        self.failed_connects.fetch_add(1, Ordering::Relaxed);
                        return Err(SendError::Connect(err, Box::new(req)));
                    }
                },
            };
            // A pooled sender becomes ready a moment after its previous response ended.
            if sender.ready().await.is_err() {
                if fresh {
                    let err = std::io::Error::other("connection closed right after the handshake");
                    self.failed_connects.fetch_add(1, Ordering::Relaxed);
                    return Err(SendError::Connect(err, Box::new(req)));
                }
                continue;
            }
            let exchange = sender.try_send_request(req);
            let outcome = tokio::select! {
                outcome = exchange => outcome,
                _ = self.cut.cancelled() => return Err(SendError::Cut),
            };
            match outcome {
                Ok(response) => return Ok((response, sender)),
                Err(mut err) => match err.take_message() {
                    Some(unsent) if !fresh => req = unsent,
                    Some(unsent) => {
                        let err = std::io::Error::other(err.into_error());
                        self.failed_connects.fetch_add(1, Ordering::Relaxed);
                        return Err(SendError::Connect(err, Box::new(unsent)));
                    }
                    None => return Err(SendError::Exchange(err.into_error())),
                },
            }
        }
    }

    async fn connect(&self) -> std::io::Result<Sender> {
        let addr = self.backend.addr;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        // Upgrades enabled on every connection: any request may turn out to be a WebSocket.
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                tracing::debug!(%addr, "backend connection ended: {err}");
            }
        });
        Ok(sender)
    }
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

    fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    fn quantile(&self, q: f64) -> u64 {
        quantile(&self.counts(), q)
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
            return upper_bound(i);
        }
    }
    upper_bound(BUCKETS - 1)
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
