//! One app on a proxy's address (a site): each worker's lane of the app's route, every backend
//! routed or still draining (the counters `stats` reports), the access log, and the hold. Also
//! how a new route becomes every worker's table, the instances that stay keeping their counters
//! and idle connections, and how a backend is drained.
//!
//! A request reads its worker's lane only (`lane`, `rerouted`); the `known` lock is taken by
//! `set_route`, `stats` and `drain`, and the `settings` lock by `set_route` and
//! `set_access_log`, never by a request. The access log reaches the requests on the route's
//! table, so a request with the log off tests one `Option` and takes no lock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderValue;
use tokio::sync::Notify;

use super::access_log::{AccessLog, LineLosses};
use super::route::{
    self, Backend, BackendState, BackendStats, Hold, Lane, Route, SlotStats, Split, Table,
};
use crate::protocol::app::{TlsSpec, Upstream, UpstreamTlsSpec};
use crate::supervisor::upstream_tls::UpstreamTls;

/// What the requests for one app share with its `Proxy` handle.
#[derive(Debug)]
pub(super) struct SiteState {
    /// One per worker thread.
    lanes: Box<[Lane]>,
    /// Every backend routed now or still draining: the counters `stats` reports. Locked only by
    /// `set_route`, `stats` and `drain`, never by a request.
    known: Mutex<Vec<Arc<BackendState>>>,
    /// The counters of backends forgotten while others of their release are still known (an
    /// instance replaced, a canary cut): a release's totals never go down while it runs, so that
    /// the admin address's counters stay counters. Kept with `known`'s lock held; a release's
    /// entry goes with its last backend.
    retired: Mutex<Vec<(String, [SlotStats; 2])>>,
    /// Worker threads: each backend keeps one pool of idle connections per worker.
    workers: usize,
    /// How long a request waits for an instance while none is routed, in milliseconds (see
    /// `set_hold`).
    pub(super) hold_ms: AtomicU64,
    /// Requests go to the instances over HTTP/2 (`upstream: h2c` or `h2`).
    pub(super) upstream_h2: AtomicBool,
    /// With `upstream: h2`, the TLS client to the instances; none: h2c.
    pub(super) upstream_tls: ArcSwapOption<UpstreamTls>,
    /// The `upstream` and `upstream_tls` last set: only a change reads the CA again.
    pub(super) upstream_spec: Mutex<(Upstream, Option<UpstreamTlsSpec>)>,
    /// The HTTPS port requests are redirected to (`tls.redirect_from`), [`NO_REDIRECT`] if none.
    pub(super) redirect_port: AtomicU32,
    /// Woken by every `set_route`, for the requests held while none is routed.
    route_changed: Notify,
    /// The key of the canary cookie's MAC (see `split`), random per site.
    cookie_key: [u8; 32],
    /// The route last set and the access log, which every new table gets.
    settings: Mutex<Settings>,
    /// `Strict-Transport-Security` for the app's answers over TLS (`tls.hsts`).
    hsts: ArcSwapOption<HeaderValue>,
    /// The app's `tls` section as last set, and how many times it was set: a certificate
    /// watcher ends when the count moved on.
    pub(super) tls: Mutex<Option<TlsSpec>>,
    pub(super) tls_generation: AtomicU64,
}

/// `redirect_port` when the site serves requests rather than redirecting them.
pub(super) const NO_REDIRECT: u32 = u32::MAX;

/// What a new table is made of besides the route's backends.
#[derive(Debug, Default)]
struct Settings {
    route: Route,
    access_log: Option<Arc<AccessLog>>,
}

impl SiteState {
    /// The state of a site served by `workers` worker threads, with an empty route.
    pub fn new(workers: usize) -> SiteState {
        SiteState {
            lanes: (0..workers)
                .map(|_| Lane {
                    table: ArcSwap::from_pointee(Table::default()),
                    turn: AtomicUsize::new(0),
                })
                .collect(),
            known: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
            workers,
            hold_ms: AtomicU64::new(0),
            upstream_h2: AtomicBool::new(false),
            upstream_tls: ArcSwapOption::empty(),
            upstream_spec: Mutex::default(),
            redirect_port: AtomicU32::new(NO_REDIRECT),
            route_changed: Notify::new(),
            cookie_key: rand::random(),
            settings: Mutex::default(),
            hsts: ArcSwapOption::empty(),
            tls: Mutex::new(None),
            tls_generation: AtomicU64::new(0),
        }
    }

    /// The HTTPS port the site redirects every request to, if it is a redirect (`tls.redirect_from`).
    #[inline]
    pub fn redirect_port(&self) -> Option<u16> {
        u16::try_from(self.redirect_port.load(Ordering::Relaxed)).ok()
    }

    /// The `Strict-Transport-Security` value for the app's answers over TLS, if it has one.
    #[inline]
    pub fn hsts(&self) -> Option<HeaderValue> {
        self.hsts.load().as_deref().cloned()
    }

    /// Sets the app's HSTS max-age (`None`: no header).
    pub fn set_hsts(&self, max_age: Option<Duration>) {
        let value = max_age
            .and_then(|age| HeaderValue::from_str(&format!("max-age={}", age.as_secs())).ok());
        self.hsts.store(value.map(Arc::new));
    }

    pub fn lane(&self, worker: usize) -> &Lane {
        &self.lanes[worker % self.lanes.len()]
    }

    /// Waits, within a request's hold (`set_hold`), for a route to try again (see
    /// `route::rerouted`).
    pub async fn rerouted(
        &self,
        worker: usize,
        seen: &Arc<Table>,
        hold: &mut Hold,
    ) -> Option<Arc<Table>> {
        let hold_for = Duration::from_millis(self.hold_ms.load(Ordering::Relaxed));
        route::rerouted(self.lane(worker), &self.route_changed, hold_for, seen, hold).await
    }

    /// Replaces every worker's table with `route`'s and wakes the held requests.
    pub fn set_route(&self, route: Route) {
        let mut settings = lock(&self.settings);
        settings.route = route.clone();
        self.make_tables(route, settings.access_log.clone());
    }

    /// Starts writing an access log at `path` for `app` (`None`: stops): from the next request
    /// on, each gets a line. The same path as now changes nothing; a file that cannot be opened
    /// leaves the log as it was.
    pub fn set_access_log(&self, app: &str, path: Option<&Path>) -> std::io::Result<()> {
        let mut settings = lock(&self.settings);
        let now = settings.access_log.as_ref().map(|log| log.path());
        if now == path {
            return Ok(());
        }
        let log = match path {
            Some(path) => Some(Arc::new(AccessLog::open(path, app, self.workers)?)),
            None => None,
        };
        settings.access_log = log.clone();
        self.make_tables(settings.route.clone(), log);
        Ok(())
    }

    /// The access log's file and what it dropped or lost so far; `None` with the log off.
    pub fn access_log_losses(&self) -> Option<(PathBuf, LineLosses)> {
        let settings = lock(&self.settings);
        let log = settings.access_log.as_ref()?;
        Some((log.path().to_owned(), log.losses()))
    }

    /// Makes `route` (with `access_log`) every worker's table; the caller holds `settings`.
    fn make_tables(&self, route: Route, access_log: Option<Arc<AccessLog>>) {
        let mut known = lock(&self.known);
        let mut gone = Vec::new();
        let mut state_of = |backend: Arc<Backend>| {
            // Same instance (id and address) keeps its counters and its idle connections; one
            // cut by a drain starts afresh, or its requests would be cut at once.
            let existing = known.iter().find(|s| {
                s.backend.id == backend.id
                    && s.backend.addr == backend.addr
                    && !s.cut.is_cancelled()
            });
            match existing {
                Some(state) => state.clone(),
                None => {
                    let (replaced, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut *known)
                        .into_iter()
                        .partition(|s| s.backend.id == backend.id && s.in_flight() == 0);
                    *known = kept;
                    gone.extend(replaced);
                    let state = Arc::new(BackendState::new(backend, self.workers));
                    known.push(state.clone());
                    state
                }
            }
        };
        let mut backends: Vec<Arc<BackendState>> =
            route.backends.into_iter().map(&mut state_of).collect();
        let stable_count = backends.len();
        if let Some(canary) = &route.canary {
            backends.extend(canary.backends.iter().cloned().map(&mut state_of));
        }
        // Once the new ones are known: an instance replaced keeps its release's totals.
        self.retire(&known, gone);
        for lane in &self.lanes {
            lane.table.store(Arc::new(Table {
                backends: backends.clone(),
                stable_count,
                balance: route.balance,
                split: route
                    .canary
                    .as_ref()
                    .map(|c| Split::new(c, &self.cookie_key)),
                access_log: access_log.clone(),
            }));
        }
        self.route_changed.notify_waiters();
    }

    /// Counters of every backend currently routed or still draining, with its slot now.
    pub fn stats(&self) -> Vec<BackendStats> {
        let table = self.lane(0).table.load();
        let slot_of = |state: &Arc<BackendState>| {
            let index = table.backends.iter().position(|s| Arc::ptr_eq(s, state))?;
            Some(table.slot_of(index))
        };
        lock(&self.known)
            .iter()
            .map(|s| BackendStats {
                routed_as: slot_of(s),
                ..s.stats()
            })
            .collect()
    }

    /// What the backends forgotten so far served, by release, for the releases still known.
    pub fn retired(&self) -> Vec<(String, [SlotStats; 2])> {
        let _known = lock(&self.known);
        lock(&self.retired).clone()
    }

    /// Adds the counters of `gone` (just taken out of `known`) to their releases' retired
    /// totals, and drops the totals of releases no backend in `known` runs any more.
    fn retire(&self, known: &[Arc<BackendState>], gone: Vec<Arc<BackendState>>) {
        let mut retired = lock(&self.retired);
        for state in gone {
            let stats = state.stats();
            let version = &state.backend.version;
            let at = match retired.iter().position(|(v, _)| v == version) {
                Some(at) => at,
                None => {
                    retired.push((version.clone(), Default::default()));
                    retired.len() - 1
                }
            };
            for (total, slot) in retired[at].1.iter_mut().zip(&stats.slots) {
                total.add(slot);
            }
        }
        retired.retain(|(version, _)| known.iter().any(|s| s.backend.version == *version));
    }

    /// Waits until `backend_id` has nothing in flight or `timeout` passes, then cuts what is
    /// left; forgets the backend if it is no longer routed. Returns the number cut.
    pub async fn drain(&self, backend_id: &str, timeout: Duration) -> u64 {
        let state = lock(&self.known)
            .iter()
            .rev()
            .find(|s| s.backend.id == backend_id)
            .cloned();
        let Some(state) = state else { return 0 };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut cut = 0;
        if !state.wait_idle(deadline).await {
            cut = state.in_flight();
            tracing::info!(
                backend = %state.backend.id,
                "drain deadline of {timeout:?} passed, cutting {cut} open connection(s)"
            );
            state.cut_all();
            // Cut requests and tunnels end at their next poll; give them a moment to do so, so
            // that the instance is really free when this returns.
            let settle = tokio::time::Instant::now() + Duration::from_secs(2);
            state.wait_idle(settle).await;
        }
        state.close_idle();
        let routed = self.lane(0).table.load().routes(&state);
        if !routed {
            let mut known = lock(&self.known);
            if let Some(at) = known.iter().position(|s| Arc::ptr_eq(s, &state)) {
                let gone = known.remove(at);
                self.retire(&known, vec![gone]);
            }
        }
        cut
    }
}

/// The registry lock: a panic while holding it leaves plain data behind, still usable.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
