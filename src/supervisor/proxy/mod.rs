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
//! never leaves the thread that accepted its connection. Its two sides: *downstream*, the client
//! connections it accepts (hyper's server; `downstream` counts and closes them, `serve` drives
//! each), and *upstream*, its connections to the instances (a small HTTP/1.1 client of its own,
//! `upstream` and `body`, run inside the same task).
//!
//! The files stand in layers, from the top down: each uses only the lines below it and, on its
//! own line, the files after it (this file only declares them, re-exports what the supervisor
//! uses and holds the `Proxy` handle):
//!
//! - `workers` (threads, accept loops), `forward` (one HTTP request), `tcp` (TCP mode);
//! - `serve` (one downstream connection), `body` (a response on its way), `access_entry` (a
//!   request's access-log line in the making), `state` (what the workers share with the handle);
//! - `route` (the route, each worker's table, the pick), `split` (a canary's share), `backend`
//!   (one instance: counters, pools), `downstream` (the accepted connections);
//! - `counters` (a backend's counters by slot, and how they read back);
//! - `access_log` (the file and its writer thread), `access_line` (one line's JSON), `pool`,
//!   `upstream`, `request`, `head`, `framing` (HTTP/1.1 to and from instances), `limits`,
//!   `pace`, `histogram`, `room`, `proxy_protocol`; `fuzz` (hidden) feeds `head` and `framing`.

mod access_entry;
mod access_line;
mod access_log;
mod backend;
mod body;
mod counters;
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
mod state;
mod tcp;
mod upstream;
mod workers;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use access_log::LineLosses;
pub use backend::Backend;
pub use counters::{BackendStats, Slot, SlotStats};
pub use histogram::{quantile, recut};
pub use limits::ClientLimits;
pub use route::Route;
pub use split::{CanaryRoute, Side};
use state::{lock, ProxyState};
use workers::Workers;

/// A running proxy for one app; dropping it closes the listener and stops its worker threads
/// (with the connections still open on them) before the drop returns.
#[derive(Debug)]
pub struct Proxy {
    pub local_addr: SocketAddr,
    state: Arc<ProxyState>,
    workers: Workers,
    /// A copy of the listening socket for `listener`; `shutdown` lets go of it.
    listener: Mutex<Option<std::net::TcpListener>>,
}

impl Proxy {
    /// Binds `listen` and starts serving (with an empty route: requests get 503 until one is set)
    /// on one worker thread per core.
    pub async fn bind(listen: SocketAddr) -> std::io::Result<Proxy> {
        let listener = workers::listen_on(listen)
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
        let state = Arc::new(ProxyState::new(workers));
        let workers = Workers::start(listener, state.clone(), workers, held)?;
        Ok(Proxy {
            local_addr,
            state,
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
        self.state.downstream.begin_close();
        // A worker may be mid-accept: once every accept loop has ended, every connection they
        // accepted is counted, and none comes after.
        self.workers.accepting_stopped().await;
        self.state.downstream.close(timeout).await
    }

    /// Replaces the route atomically: new requests go to the new backends from now on; requests
    /// in flight on the old ones finish there.
    pub fn set_route(&self, route: Route) {
        self.state.set_route(route);
    }

    /// While no instance can take a new request (or TCP connection) — none is routed, or none
    /// accepts connections — it waits up to `hold` for a route that has one, instead of being
    /// answered 503 or 502 (closed) at once. Zero, the default: no waiting.
    pub fn set_hold(&self, hold: Duration) {
        let ms = hold.as_millis().min(u64::MAX as u128) as u64;
        self.state.hold_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether every new connection must start with a PROXY protocol header (from a trusted load
    /// balancer in front), whose client address then stands for the connection's peer.
    pub fn set_proxy_protocol(&self, on: bool) {
        self.state.proxy_protocol.store(on, Ordering::Relaxed);
    }

    /// TCP mode: each new connection goes whole to one instance (counted as one request;
    /// a failed connect is tried on another instance). Connections already open keep their mode.
    pub fn set_tcp(&self, on: bool) {
        self.state.tcp.store(on, Ordering::Relaxed);
    }

    /// What a client may hold and for how long: the most connections open at once, and how
    /// long an unused connection, a stalled request body or an untaken response may last (see
    /// [`ClientLimits`]). The connection limit applies at once; the rest to new connections.
    pub fn set_client_limits(&self, limits: ClientLimits) {
        self.state.limits.set(limits);
    }

    /// Sets only `idle_timeout` of the client limits (30 s unless set): a connection with no
    /// request begun and none in progress is closed after one to two such periods.
    pub fn set_idle_timeout(&self, timeout: Duration) {
        let limits = self.state.limits.get();
        self.set_client_limits(ClientLimits {
            idle_timeout: timeout,
            ..limits
        });
    }

    /// HTTP mode: appends a JSON line per request to the access log at `path` (`app` names the
    /// app in each line), written by a thread of its own, never in a request's way; `None`
    /// stops it. Setting the path already in use changes nothing; an error (the file cannot be
    /// opened) leaves the log as it was.
    pub fn set_access_log(&self, app: &str, path: Option<&Path>) -> std::io::Result<()> {
        self.state.set_access_log(app, path)
    }

    /// The access log's file and the lines it dropped or lost so far; `None` with the log off.
    pub fn access_log_losses(&self) -> Option<(std::path::PathBuf, LineLosses)> {
        self.state.access_log_losses()
    }

    /// Client connections open now.
    pub fn client_connections(&self) -> usize {
        self.state.downstream.count()
    }

    /// Counters of every backend currently routed or still draining.
    pub fn stats(&self) -> Vec<BackendStats> {
        self.state.stats()
    }

    /// What backends no longer known served, by release, for the releases still running (see
    /// [`Proxy::stats`]): with it, a release's totals never go down while it runs.
    pub fn retired(&self) -> Vec<(String, [SlotStats; 2])> {
        self.state.retired()
    }

    /// Waits until `backend_id` has no request or connection in flight, or `timeout` passes;
    /// returns the number still open (and then cut) at the deadline.
    ///
    /// A backend that is no longer routed is forgotten afterwards (its counters go with it).
    pub async fn drain(&self, backend_id: &str, timeout: Duration) -> u64 {
        self.state.drain(backend_id, timeout).await
    }
}
