//! A backend's counters: the per-worker atomics a request adds to (`SlotCounters`, one per
//! [`Slot`]) and how they read back (`SlotStats`, `BackendStats`): what `status` shows, the
//! canary analysis judges and the admin address's metrics add up by release and slot.

use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};

use crate::supervisor::proxy::histogram::Histogram;

/// Counters of one backend, as shown by `status` and read by the canary analysis.
///
/// `requests`, `errors_5xx`, `failed_connects` and the latency count the traffic the route sent
/// and are what a canary is judged on; what a client pinned to a side with the canary header and
/// what clients broke off themselves are counted apart, shown and never judged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendStats {
    pub id: String,
    pub version: String,
    pub requests: u64,
    pub errors_5xx: u64,
    pub failed_connects: u64,
    /// Requests whose client broke them off: an upload aborted or malformed, a client too slow.
    pub client_aborts: u64,
    /// Requests sent here by the canary header (testers), and their 5xx and broken exchanges.
    pub pinned_requests: u64,
    pub pinned_errors_5xx: u64,
    pub in_flight: u64,
    /// Keep-alive connections to the instance waiting for a request.
    pub idle_connections: u64,
    /// p50/p99 latency over the kept window, in microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
    /// The latency histogram's bucket counts: two readings subtract into the histogram of the
    /// time between them (see [`quantile`]). Not sent over the control socket.
    #[serde(skip)]
    pub latency: Vec<u64>,
    /// The same counters by the slot the requests were sent to, stable first (the sums above
    /// add both). Not sent over the control socket.
    #[serde(skip)]
    pub slots: [SlotStats; 2],
    /// Where the route has it now; `None` while it drains. Not sent over the control socket.
    #[serde(skip)]
    pub routed_as: Option<Slot>,
}

/// A backend's place in the route when a request reached it. A canary's instances become
/// stable ones when it is promoted; what they served before stays counted as the canary's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    Stable = 0,
    Canary = 1,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::Stable, Slot::Canary];

    pub fn name(self) -> &'static str {
        match self {
            Slot::Stable => "stable",
            Slot::Canary => "canary",
        }
    }
}

/// One slot's counters of a backend, as read back (see [`BackendStats`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotStats {
    /// Requests by the class of their answer, 1xx to 5xx; an exchange that broke counts as 5xx.
    pub classes: [u64; 5],
    /// TCP-mode connections on which neither side said a word: requests of no class.
    pub quiet: u64,
    pub failed_connects: u64,
    pub client_aborts: u64,
    pub pinned_requests: u64,
    pub pinned_errors_5xx: u64,
    /// Body bytes of the instances' answers sent on to clients (HTTP mode).
    pub response_bytes: u64,
    /// The latency histogram's bucket counts (of answered requests).
    pub latency: Vec<u64>,
}

impl SlotStats {
    pub fn requests(&self) -> u64 {
        self.classes.iter().sum::<u64>() + self.quiet
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &SlotStats) {
        for (mine, theirs) in self.classes.iter_mut().zip(other.classes) {
            *mine += theirs;
        }
        self.quiet += other.quiet;
        self.failed_connects += other.failed_connects;
        self.client_aborts += other.client_aborts;
        self.pinned_requests += other.pinned_requests;
        self.pinned_errors_5xx += other.pinned_errors_5xx;
        self.response_bytes += other.response_bytes;
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            *mine += theirs;
        }
    }
}

/// One worker's counters of one slot of a backend.
#[derive(Debug, Default)]
pub(crate) struct SlotCounters {
    pub(crate) classes: [AtomicU64; 5],
    pub(crate) quiet: AtomicU64,
    pub(crate) failed_connects: AtomicU64,
    pub(crate) client_aborts: AtomicU64,
    pub(crate) pinned_requests: AtomicU64,
    pub(crate) pinned_errors_5xx: AtomicU64,
    pub(crate) response_bytes: AtomicU64,
    pub(crate) latency: Histogram,
}
