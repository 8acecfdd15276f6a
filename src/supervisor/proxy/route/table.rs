//! The route: as the supervisor sets it (`Route`), as requests read it (each worker's copy of
//! the table of backends), and how a request picks from it: the round-robin or
//! least-connections choice over a side (stable or canary), the mark that keeps the pick in
//! flight (`InFlight`), and the wait of a held request for a route with an instance in it.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::backend::{Backend, BackendState};
use super::counters::Slot;
use super::split::{CanaryRoute, Side, Split};
use crate::protocol::app::Balance;
use crate::supervisor::proxy::access_log::AccessLog;

/// The set of instances that take new requests. Swapped as a whole.
#[derive(Debug, Clone, Default)]
pub struct Route {
    /// The live (stable) release's instances.
    pub backends: Vec<Arc<Backend>>,
    pub balance: Balance,
    /// While a canary runs: the new release's instances and their share.
    pub canary: Option<CanaryRoute>,
}

/// The route as requests read it: each backend with its live state. During a canary the
/// canary's instances follow the stable ones in `backends` (from index `stable_count` on), so
/// that an in-flight mark can name any backend by its index.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub backends: Vec<Arc<BackendState>>,
    /// How many of `backends` are the stable release's; the rest are the canary's.
    pub stable_count: usize,
    pub balance: Balance,
    /// How requests are split while a canary runs.
    pub split: Option<Split>,
    /// Where each request's line goes, when the app keeps an access log.
    pub access_log: Option<Arc<AccessLog>>,
}

impl Table {
    pub fn routes(&self, state: &Arc<BackendState>) -> bool {
        self.backends.iter().any(|s| Arc::ptr_eq(s, state))
    }

    /// Which slot the backend at `index` stands in, for its counters.
    #[inline]
    pub fn slot_of(&self, index: usize) -> Slot {
        if index < self.stable_count {
            Slot::Stable
        } else {
            Slot::Canary
        }
    }
}

/// One worker's copy of the route and its round-robin turn, on a cache line of its own: each
/// worker takes (and counts references to) its own copy, so no request writes where a request on
/// another core does.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Lane {
    pub table: ArcSwap<Table>,
    /// Round-robin turn; also breaks ties for least-connections.
    pub turn: AtomicUsize,
}

/// The ranges of `table.backends` a request on `side` tries, in order: its own side's
/// instances, then the other side's (during a canary; else the second is empty).
pub(crate) fn sides(table: &Table, side: Side) -> [Range<usize>; 2] {
    let (stable, canary) = (
        0..table.stable_count,
        table.stable_count..table.backends.len(),
    );
    match side {
        Side::Canary if !canary.is_empty() => [canary, stable],
        _ => [stable, canary],
    }
}

/// The next backend to try, taking the round-robin turn: from the first range (the request's
/// side), else the second; marks it in `tried`. `None` once every one of both was tried.
pub(crate) fn next_backend(
    table: &Table,
    lane: &Lane,
    sides: [&Range<usize>; 2],
    tried: &mut u64,
) -> Option<usize> {
    let turn = lane.turn.fetch_add(1, Ordering::Relaxed);
    let index = sides
        .iter()
        .find_map(|range| pick(table, (*range).clone(), turn, *tried))?;
    *tried |= 1u64 << (index % 64);
    Some(index)
}

/// The next instance of `table.backends[range]` to try, skipping those in `tried` (a bit per
/// index of `table.backends`).
pub(crate) fn pick(table: &Table, range: Range<usize>, turn: usize, tried: u64) -> Option<usize> {
    let n = range.len();
    let untried = |i: &usize| tried & (1u64 << (i % 64)) == 0;
    let mut order = (0..n).map(|k| range.start + (turn + k) % n).filter(untried);
    match table.balance {
        Balance::RoundRobin => order.next(),
        // Ties go to the round-robin order, so equal instances still share the load.
        Balance::LeastConnections => order.min_by_key(|&i| table.backends[i].in_flight()),
    }
}

/// Waits, within a request's hold, for a route to try again: another than `seen` with an
/// instance in it, or after a pause that doubles each time (an instance restarted on the same
/// address changes no route), the same one. `None`: no hold, or it ran out. Only for a request
/// that no instance could take yet (none routed, or none accepting connections): nothing of it
/// has been sent, so it can go again.
pub(crate) async fn rerouted(
    lane: &Lane,
    route_changed: &Notify,
    hold_for: Duration,
    seen: &Arc<Table>,
    hold: &mut Hold,
) -> Option<Arc<Table>> {
    let until = *hold
        .until
        .get_or_insert_with(|| tokio::time::Instant::now() + hold_for);
    hold.pause = (hold.pause * 2).clamp(HOLD_RETRY_FIRST, HOLD_RETRY_MAX);
    let retry_at = (tokio::time::Instant::now() + hold.pause).min(until);
    loop {
        let changed = route_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let table = lane.table.load_full();
        let now = tokio::time::Instant::now();
        if now >= until {
            return None;
        }
        if !table.backends.is_empty() && (!Arc::ptr_eq(&table, seen) || now >= retry_at) {
            return Some(table);
        }
        let wake = if table.backends.is_empty() {
            until
        } else {
            retry_at
        };
        let _ = tokio::time::timeout_at(wake, changed).await;
    }
}

/// The first pause before a held request tries the same route again; it doubles up to the max.
const HOLD_RETRY_FIRST: Duration = Duration::from_millis(50);
const HOLD_RETRY_MAX: Duration = Duration::from_millis(500);

/// One request's wait for an instance (see `ProxyState::rerouted`).
#[derive(Debug, Default)]
pub(crate) struct Hold {
    /// Set by the first wait: when the request stops waiting.
    until: Option<tokio::time::Instant>,
    /// The last pause before trying the same route again.
    pause: Duration,
}

/// Marks one request or tunnel as in flight on a backend (on `worker`'s count) until dropped.
/// It holds the backend through the worker's own copy of the route (`table`), whose reference
/// count only that worker writes.
#[derive(Debug)]
pub(crate) struct InFlight {
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
        in_flight.state().enter(worker);
        in_flight
    }

    pub fn state(&self) -> &Arc<BackendState> {
        &self.table.backends[self.index]
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state().leave(self.worker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize, balance: Balance) -> Table {
        let backends = (0..n)
            .map(|i| {
                Arc::new(BackendState::new(
                    Arc::new(Backend {
                        id: format!("b{i}"),
                        version: "v1".into(),
                        addr: ([127, 0, 0, 1], 1000 + i as u16).into(),
                    }),
                    1,
                ))
            })
            .collect();
        Table {
            backends,
            stable_count: n,
            balance,
            split: None,
            access_log: None,
        }
    }

    #[test]
    fn round_robin_takes_turns_and_skips_tried_backends() {
        let t = table(3, Balance::RoundRobin);
        assert_eq!(pick(&t, 0..3, 0, 0), Some(0));
        assert_eq!(pick(&t, 0..3, 4, 0), Some(1));
        assert_eq!(pick(&t, 0..3, 4, 0b010), Some(2));
        assert_eq!(pick(&t, 0..3, 4, 0b111), None);
    }

    #[test]
    fn least_connections_prefers_the_idlest_backend() {
        let t = Arc::new(table(3, Balance::LeastConnections));
        let _busy = [
            InFlight::new(t.clone(), 0, 0),
            InFlight::new(t.clone(), 1, 0),
        ];
        assert_eq!(pick(&t, 0..3, 0, 0), Some(2));
        assert_eq!(pick(&t, 0..3, 0, 0b100), Some(0), "ties go in turn order");
        assert_eq!(t.backends[0].in_flight(), 1);
    }
}
