//! The app's public face: a reverse proxy that owns the app's `listen` address and spreads requests
//! over the healthy instances of the route, which the deploy swaps atomically.
//!
//! HTTP/1.1 with keep-alive and WebSocket upgrades; a failed connect is retried on another
//! instance; per-instance counters (requests, 5xx, latency) and in-flight tracking for draining.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::app::Balance;

/// One instance as the proxy sees it. Shared between the route and its counters.
#[derive(Debug)]
pub struct Backend {
    /// Instance id, e.g. `shop-1.4.2-0`.
    pub id: String,
    /// Release version the instance runs.
    pub version: String,
    pub addr: SocketAddr,
}

/// The set of instances that take new requests. Swapped as a whole.
#[derive(Debug, Clone, Default)]
pub struct Route {
    pub backends: Vec<Arc<Backend>>,
    pub balance: Balance,
}

/// Counters of one backend, as shown by `status` and read by the canary analysis.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendStats {
    pub id: String,
    pub version: String,
    pub requests: u64,
    pub errors_5xx: u64,
    pub failed_connects: u64,
    pub in_flight: u64,
    /// p50/p99 latency over the kept window, in microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
}

/// A running proxy for one app; dropping it closes the listener.
#[derive(Debug)]
pub struct Proxy {
    pub local_addr: SocketAddr,
}

impl Proxy {
    /// Binds `listen` and starts serving (with an empty route: requests get 503 until one is set).
    pub async fn bind(listen: SocketAddr) -> std::io::Result<Proxy> {
        let _ = listen;
        todo!("Proxy::bind")
    }

    /// Replaces the route atomically: new requests go to the new backends from now on; requests
    /// in flight on the old ones finish there.
    pub fn set_route(&self, route: Route) {
        let _ = route;
        todo!("Proxy::set_route")
    }

    /// Counters of every backend currently routed or still draining.
    pub fn stats(&self) -> Vec<BackendStats> {
        todo!("Proxy::stats")
    }

    /// Waits until `backend_id` has no request or connection in flight, or `timeout` passes;
    /// returns the number still open (and then cut) at the deadline.
    pub async fn drain(&self, backend_id: &str, timeout: Duration) -> u64 {
        let _ = (backend_id, timeout);
        todo!("Proxy::drain")
    }
}
