//! What a client may hold, and for how long: the app's `max_connections`, `idle_timeout`,
//! `body_timeout`, `send_timeout` and `min_rate`, as a proxy keeps them — set at every deploy,
//! read without a lock by every new connection, which keeps the values it started with.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::pace::Pace;

/// The limits of one proxy's clients; the defaults are those of the manifest's `app:` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// The most client connections open at once; beyond it the oldest idle one is closed to
    /// make room, else new ones wait in the listen backlog.
    pub max_connections: usize,
    /// A connection with no request begun and none in progress is closed after one to two of
    /// these.
    pub idle_timeout: Duration,
    /// The longest wait for the next bytes of a request body.
    pub body_timeout: Duration,
    /// The longest wait for the client to take the next bytes of a response.
    pub send_timeout: Duration,
    /// Bytes per second a client must average over the time the proxy waits on it, beyond the
    /// first timeout (see `pace`); 0: no minimum.
    pub min_rate: u64,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_connections: 4096,
            idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            min_rate: 500,
        }
    }
}

impl ClientLimits {
    pub(super) fn body(&self) -> Pace {
        Pace {
            timeout: self.body_timeout,
            min_rate: self.min_rate,
        }
    }

    pub(super) fn send(&self) -> Pace {
        Pace {
            timeout: self.send_timeout,
            min_rate: self.min_rate,
        }
    }
}

/// [`ClientLimits`] as atomics: durations in milliseconds (at least one).
#[derive(Debug)]
pub(super) struct AtomicClientLimits {
    max_connections: AtomicUsize,
    idle_ms: AtomicU64,
    body_ms: AtomicU64,
    send_ms: AtomicU64,
    min_rate: AtomicU64,
}

fn ms(duration: Duration) -> u64 {
    duration.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

impl AtomicClientLimits {
    pub fn new(limits: ClientLimits) -> AtomicClientLimits {
        let new = AtomicClientLimits {
            max_connections: AtomicUsize::new(0),
            idle_ms: AtomicU64::new(0),
            body_ms: AtomicU64::new(0),
            send_ms: AtomicU64::new(0),
            min_rate: AtomicU64::new(0),
        };
        new.set(limits);
        new
    }

    pub fn set(&self, limits: ClientLimits) {
        let relaxed = Ordering::Relaxed;
        self.max_connections
            .store(limits.max_connections.max(1), relaxed);
        self.idle_ms.store(ms(limits.idle_timeout), relaxed);
        self.body_ms.store(ms(limits.body_timeout), relaxed);
        self.send_ms.store(ms(limits.send_timeout), relaxed);
        self.min_rate.store(limits.min_rate, relaxed);
    }

    pub fn get(&self) -> ClientLimits {
        let relaxed = Ordering::Relaxed;
        ClientLimits {
            max_connections: self.max_connections(),
            idle_timeout: Duration::from_millis(self.idle_ms.load(relaxed)),
            body_timeout: Duration::from_millis(self.body_ms.load(relaxed)),
            send_timeout: Duration::from_millis(self.send_ms.load(relaxed)),
            min_rate: self.min_rate.load(relaxed),
        }
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }
}
