//! The app's public face: a reverse proxy that owns the app's `listen` address and spreads requests
//! over the healthy instances of the route, which the deploy swaps atomically.
//!
//! HTTP/1.1 with keep-alive and WebSocket upgrades; a failed connect is retried on another
//! instance; per-instance counters (requests, 5xx, latency) and in-flight tracking for draining.
//!
//! The route is read lock-free on every request (`arc-swap`), and an instance is chosen per
//! request, not per connection: after a swap, clients' existing keep-alive connections move to the
//! new instances with their very next request.
//!
//! Built for speed the way nginx is (`workers`): one event loop per core, each accepting on the
//! shared listening socket and keeping its own idle connections to each instance, so a request
//! never leaves the thread that accepted its connection; the client side is hyper's server, the
//! instance side a small HTTP/1.1 client (`client`, `body`) run inside that same task.

mod backend;
mod body;
mod downstream;
mod forward;
mod framing;
#[doc(hidden)]
pub mod fuzz;
mod head;
mod histogram;
mod limits;
mod pace;
mod pool;
mod proxy_protocol;
mod request;
mod room;
mod route;
mod serve;
mod split;
mod tcp;
mod upstream;
mod workers;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::protocol::app::Balance;
use backend::BackendState;
pub use split::{CanaryRoute, Side};
use downstream::Downstream;
pub use histogram::quantile;
pub use limits::ClientLimits;
use limits::Limits;
use route::{Hold, Lane, Table};
use workers::Workers;

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
    /// The live (stable) release's instances.
    pub backends: Vec<Arc<Backend>>,
    pub balance: Balance,
    /// While a canary runs: the new release's instances and their share.
    pub canary: Option<CanaryRoute>,
}

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
}

/// What every connection task shares with the `Proxy` handle.
#[derive(Debug)]
struct Shared {
    /// One per worker thread.
    lanes: Box<[Lane]>,
    /// Every backend routed now or still draining: the counters `stats` reports. Locked only by
    /// `set_route`, `stats` and `drain`, never by a request.
    known: Mutex<Vec<Arc<BackendState>>>,
    /// Worker threads: each backend keeps one pool of idle connections per worker.
    workers: usize,
    /// The open client connections, for `close`.
    downstream: Arc<Downstream>,
    /// Connections start with a PROXY protocol header (see `set_proxy_protocol`).
    proxy_protocol: AtomicBool,
    /// Connections are piped whole to one instance (see `set_tcp`).
    tcp: AtomicBool,
    /// What a client may hold and for how long (see `set_client_limits`).
    limits: Limits,
    /// How long a request waits for an instance while none is routed, in milliseconds (see
    /// `set_hold`).
    hold_ms: AtomicU64,
    /// Woken by every `set_route`, for the requests held while none is routed.
    route_changed: Notify,
    /// The key of the canary cookie's MAC (see `split`), random per proxy.
    cookie_key: [u8; 32],
}

impl Shared {
    fn lane(&self, worker: usize) -> &Lane {
        &self.lanes[worker % self.lanes.len()]
    }

    /// Waits, within a request's hold (`set_hold`), for a route to try again (see
    /// `route::rerouted`).
    async fn rerouted(
        &self,
        worker: usize,
        seen: &Arc<Table>,
        hold: &mut Hold,
    ) -> Option<Arc<Table>> {
        let hold_for = Duration::from_millis(self.hold_ms.load(Ordering::Relaxed));
        route::rerouted(self.lane(worker), &self.route_changed, hold_for, seen, hold).await
    }
}

/// A running proxy for one app; dropping it closes the listener and stops its worker threads
/// (with the connections still open on them) before the drop returns.
#[derive(Debug)]
pub struct Proxy {
    pub local_addr: SocketAddr,
    shared: Arc<Shared>,
    workers: Workers,
    /// A copy of the listening socket for `listener`; `shutdown` lets go of it.
    listener: Mutex<Option<std::net::TcpListener>>,
}

impl Proxy {
    /// Binds `listen` and starts serving (with an empty route: requests get 503 until one is set)
    /// on one worker thread per core.
    pub async fn bind(listen: SocketAddr) -> std::io::Result<Proxy> {
        let listener = listen_on(listen)
            .and_then(|listener| listener.into_std())
            .map_err(|err| {
                std::io::Error::new(
                    err.kind(),
                    format!("cannot listen on {listen}: {err} (is another process using it?)"),
                )
            })?;
        Proxy::from_listener(listener)
    }

    /// Serves on a listener bound elsewhere (handed over by a previous supervisor, or bound
    /// before dropping privileges), on one worker thread per core.
    pub fn from_listener(listener: std::net::TcpListener) -> std::io::Result<Proxy> {
        Proxy::with_workers(listener, workers::default_count(), false)
    }

    /// Like `from_listener`, but accepts nothing before `start_accepting`: a restarted
    /// supervisor's clients wait in the socket's backlog until the route is set, rather than
    /// getting 503s from an empty one.
    pub fn from_listener_held(listener: std::net::TcpListener) -> std::io::Result<Proxy> {
        Proxy::with_workers(listener, workers::default_count(), true)
    }

    /// Starts the accept loops of a proxy made by `from_listener_held`; does nothing otherwise.
    pub fn start_accepting(&self) {
        self.workers.start_accepting();
    }

    /// Serves on `listener` with `workers` threads (at least one), each running its own event
    /// loop and accepting from the same socket; `held`: not before `start_accepting`.
    pub fn with_workers(
        listener: std::net::TcpListener,
        workers: usize,
        held: bool,
    ) -> std::io::Result<Proxy> {
        let local_addr = listener.local_addr()?;
        let copy = listener.try_clone()?;
        let workers = workers.max(1);
        let shared = Arc::new(Shared {
            lanes: (0..workers)
                .map(|_| Lane {
                    route: ArcSwap::from_pointee(Table::default()),
                    next: AtomicUsize::new(0),
                })
                .collect(),
            known: Mutex::new(Vec::new()),
            workers,
            downstream: Arc::new(Downstream::new(workers)),
            proxy_protocol: AtomicBool::new(false),
            tcp: AtomicBool::new(false),
            limits: Limits::new(ClientLimits::default()),
            hold_ms: AtomicU64::new(0),
            route_changed: Notify::new(),
            cookie_key: rand::random(),
        });
        let workers = Workers::start(listener, shared.clone(), workers, held)?;
        Ok(Proxy {
            local_addr,
            shared,
            workers,
            listener: Mutex::new(Some(copy)),
        })
    }

    /// Stops accepting connections; connections already open finish their requests.
    pub fn shutdown(&self) {
        self.workers.stop_accepting();
        lock(&self.listener).take();
    }

    /// Stops accepting and returns once no worker accepts any more, so that another proxy can
    /// serve a copy of the socket without this one taking its connections.
    pub async fn stop_accepting(&self) {
        self.shutdown();
        self.workers.accepting_stopped().await;
    }

    /// A copy of the listening socket (the same socket under a new descriptor), to hand to the
    /// next supervisor: the socket stays open, and connections wait in its backlog, as long as
    /// any copy is open. Fails after `shutdown`.
    pub fn listener(&self) -> std::io::Result<std::net::TcpListener> {
        lock(&self.listener)
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the proxy no longer listens"))?
            .try_clone()
    }

    /// Stops accepting, then lets go of every client connection without failing a request: each
    /// gets `Connection: close` on its next response, idle ones are closed. Returns when all are
    /// closed, or after `timeout` (shutting down the rest); the number still open then.
    pub async fn close(&self, timeout: Duration) -> u64 {
        self.shutdown();
        // Responses already say `Connection: close` while the workers stop accepting: a request
        // answered meanwhile must not leave its client on a connection about to be let go of.
        self.shared.downstream.begin_close();
        // A worker may be mid-accept: once every accept loop has ended, every connection they
        // accepted is counted, and none comes after.
        self.workers.accepting_stopped().await;
        self.shared.downstream.close(timeout).await
    }

    /// Replaces the route atomically: new requests go to the new backends from now on; requests
    /// in flight on the old ones finish there.
    pub fn set_route(&self, route: Route) {
        let mut known = lock(&self.shared.known);
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
                    known.retain(|s| s.backend.id != backend.id || s.in_flight() > 0);
                    let state = Arc::new(BackendState::new(backend, self.shared.workers));
                    known.push(state.clone());
                    state
                }
            }
        };
        let mut backends: Vec<Arc<BackendState>> =
            route.backends.into_iter().map(&mut state_of).collect();
        let stable = backends.len();
        if let Some(canary) = &route.canary {
            backends.extend(canary.backends.iter().cloned().map(&mut state_of));
        }
        for lane in &self.shared.lanes {
            lane.route.store(Arc::new(Table {
                backends: backends.clone(),
                stable,
                balance: route.balance,
                split: route
                    .canary
                    .as_ref()
                    .map(|c| split::Split::new(c, &self.shared.cookie_key)),
            }));
        }
        self.shared.route_changed.notify_waiters();
    }

    /// While no instance can take a new request (or TCP connection) — none is routed, or none
    /// accepts connections — it waits up to `hold` for a route that has one, instead of being
    /// answered 503 or 502 (closed) at once. Zero, the default: no waiting.
    pub fn set_hold(&self, hold: Duration) {
        let ms = hold.as_millis().min(u64::MAX as u128) as u64;
        self.shared.hold_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether every new connection must start with a PROXY protocol header (from a trusted load
    /// balancer in front), whose client address then stands for the connection's peer.
    pub fn set_proxy_protocol(&self, on: bool) {
        self.shared.proxy_protocol.store(on, Ordering::Relaxed);
    }

    /// TCP mode: each new connection goes whole to one instance (counted as one request;
    /// a failed connect is tried on another instance). Connections already open keep their mode.
    pub fn set_tcp(&self, on: bool) {
        self.shared.tcp.store(on, Ordering::Relaxed);
    }

    /// What a client may hold and for how long: the most connections open at once, and how
    /// long an unused connection, a stalled request body or an untaken response may last (see
    /// [`ClientLimits`]). The connection limit applies at once; the rest to new connections.
    pub fn set_client_limits(&self, limits: ClientLimits) {
        self.shared.limits.set(limits);
    }

    /// Sets only `idle_timeout` of the client limits (30 s unless set): a connection with no
    /// request begun and none in progress is closed after one to two such periods.
    pub fn set_idle_timeout(&self, timeout: Duration) {
        let limits = self.shared.limits.get();
        self.set_client_limits(ClientLimits {
            idle_timeout: timeout,
            ..limits
        });
    }

    /// Client connections open now.
    pub fn client_connections(&self) -> usize {
        self.shared.downstream.count()
    }

    /// Counters of every backend currently routed or still draining.
    pub fn stats(&self) -> Vec<BackendStats> {
        lock(&self.shared.known).iter().map(|s| s.stats()).collect()
    }

    /// Waits until `backend_id` has no request or connection in flight, or `timeout` passes;
    /// returns the number still open (and then cut) at the deadline.
    ///
    /// A backend that is no longer routed is forgotten afterwards (its counters go with it).
    pub async fn drain(&self, backend_id: &str, timeout: Duration) -> u64 {
        let state = lock(&self.shared.known)
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
        let routed = self.shared.lane(0).route.load().routes(&state);
        if !routed {
            lock(&self.shared.known).retain(|s| !Arc::ptr_eq(s, &state));
        }
        cut
    }
}

/// Connections the kernel queues for the proxy before it accepts them (Linux caps it at
/// `net.core.somaxconn`, 4096 on current kernels). A burst of thousands of clients at once (all
/// of them reconnecting after a network blip) overflows a short queue, and each connection that
/// overflows waits out a retransmission of its handshake: 1 s, then 3, 7, 15 s.
const BACKLOG: u32 = 4096;

fn listen_on(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted proxy binds at once, whatever TIME_WAITs remain.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The registry lock: a panic while holding it leaves plain data behind, still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
