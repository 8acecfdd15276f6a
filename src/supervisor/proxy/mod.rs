//! The app's public face: a reverse proxy that owns the app's `listen` address and spreads requests
//! over the healthy instances of the route, which the deploy swaps atomically.
//!
//! HTTP/1.1 with keep-alive and WebSocket upgrades; a failed connect is retried on another
//! instance; per-instance counters (requests, 5xx, latency) and in-flight tracking for draining.
//!
//! The route is read lock-free on every request (`arc-swap`), and an instance is chosen per
//! request, not per connection: after a swap, clients' existing keep-alive connections move to the
//! new instances with their very next request.

mod backend;
mod body;
mod canary;
mod clients;
mod forward;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::protocol::app::Balance;
pub use backend::quantile;
use backend::BackendState;
pub use canary::{CanaryRoute, Side};
use clients::Clients;

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
    /// The latency histogram's bucket counts: two readings subtract into the histogram of the
    /// time between them (see [`quantile`]). Not sent over the control socket.
    #[serde(skip)]
    pub latency: Vec<u64>,
}

/// The route as requests read it: each backend with its live state.
#[derive(Debug, Default)]
struct Table {
    backends: Vec<Arc<BackendState>>,
    balance: Balance,
    /// The canary's instances and how requests are split, while a canary runs.
    canary: Option<(canary::Split, Vec<Arc<BackendState>>)>,
}

impl Table {
    fn routes(&self, state: &Arc<BackendState>) -> bool {
        let canary = self.canary.iter().flat_map(|(_, b)| b);
        self.backends
            .iter()
            .chain(canary)
            .any(|s| Arc::ptr_eq(s, state))
    }
}

/// What every connection task shares with the `Proxy` handle.
#[derive(Debug)]
struct Shared {
    route: ArcSwap<Table>,
    /// Every backend routed now or still draining: the counters `stats` reports. Locked only by
    /// `set_route`, `stats` and `drain`, never by a request.
    known: Mutex<Vec<Arc<BackendState>>>,
    /// Round-robin turn; also breaks ties for least-connections.
    next: AtomicUsize,
    /// The open client connections, for `close`.
    clients: Arc<Clients>,
}

/// A running proxy for one app; dropping it closes the listener.
#[derive(Debug)]
pub struct Proxy {
    pub local_addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept loop; `close` takes it to wait until it has really stopped.
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The listening socket, shared with the accept loop so that `listener` can copy it;
    /// `shutdown` lets go of it.
    listener: Mutex<Option<Arc<TcpListener>>>,
    /// Opens the accept loop of a proxy made by `from_listener_held`.
    accepting: tokio::sync::watch::Sender<bool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(accept) = lock(&self.accept).as_ref() {
            accept.abort();
        }
    }
}

impl Proxy {
    /// Binds `listen` and starts serving (with an empty route: requests get 503 until one is set).
    pub async fn bind(listen: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await.map_err(|err| {
            std::io::Error::new(
                err.kind(),
                format!("cannot listen on {listen}: {err} (is another process using it?)"),
            )
        })?;
        Proxy::serve(listener, true)
    }

    /// Serves on a listener bound elsewhere (handed over by a previous supervisor, or bound
    /// before dropping privileges). Must be called within a tokio runtime.
    pub fn from_listener(listener: std::net::TcpListener) -> std::io::Result<Proxy> {
        listener.set_nonblocking(true)?;
        Proxy::serve(TcpListener::from_std(listener)?, true)
    }

    /// Like `from_listener`, but accepts nothing before `start_accepting`: a restarted
    /// supervisor's clients wait in the socket's backlog until the route is set, rather than
    /// getting 503s from an empty one.
    pub fn from_listener_held(listener: std::net::TcpListener) -> std::io::Result<Proxy> {
        listener.set_nonblocking(true)?;
        Proxy::serve(TcpListener::from_std(listener)?, false)
    }

    /// Starts the accept loop of a proxy made by `from_listener_held`; does nothing otherwise.
    pub fn start_accepting(&self) {
        self.accepting.send_replace(true);
    }

    fn serve(listener: TcpListener, accepting: bool) -> std::io::Result<Proxy> {
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            route: ArcSwap::from_pointee(Table::default()),
            known: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            clients: Arc::default(),
        });
        let listener = Arc::new(listener);
        let (accepting, mut open) = tokio::sync::watch::channel(accepting);
        let accept = tokio::spawn({
            let (listener, shared) = (listener.clone(), shared.clone());
            async move {
                if open.wait_for(|open| *open).await.is_ok() {
                    accept_loop(listener, shared).await;
                }
            }
        });
        Ok(Proxy {
            local_addr,
            shared,
            accept: Mutex::new(Some(accept)),
            listener: Mutex::new(Some(listener)),
            accepting,
        })
    }

    /// Stops accepting connections; connections already open finish their requests.
    pub fn shutdown(&self) {
        if let Some(accept) = lock(&self.accept).as_ref() {
            accept.abort();
        }
        lock(&self.listener).take();
    }

    /// A copy of the listening socket (the same socket under a new descriptor), to hand to the
    /// next supervisor: the socket stays open, and connections wait in its backlog, as long as
    /// any copy is open. Fails after `shutdown`.
    pub fn listener(&self) -> std::io::Result<std::net::TcpListener> {
        let listener = lock(&self.listener);
        let listener = listener
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the proxy no longer listens"))?;
        Ok(std::net::TcpListener::from(
            listener.as_fd().try_clone_to_owned()?,
        ))
    }

    /// Stops accepting, then lets go of every client connection without failing a request: each
    /// gets `Connection: close` on its next response, idle ones are closed. Returns when all are
    /// closed, or after `timeout` (shutting down the rest); the number still open then.
    pub async fn close(&self, timeout: Duration) -> u64 {
        self.shutdown();
        // The loop may be mid-accept on another thread: once it has ended, every connection it
        // accepted is counted, and none comes after.
        let accept = lock(&self.accept).take();
        if let Some(accept) = accept {
            let _ = accept.await;
        }
        self.shared.clients.close(timeout).await
    }

    /// Replaces the route atomically: new requests go to the new backends from now on; requests
    /// in flight on the old ones finish there.
    pub fn set_route(&self, route: Route) {
        let mut known = lock(&self.shared.known);
        let mut state_of = |backend: Arc<Backend>| {
            // Same instance (id and address) keeps its counters and its idle connections;
            // one cut by a drain starts afresh, or its requests would be cut at once.
            let existing = known.iter().find(|s| {
                s.backend.id == backend.id
                    && s.backend.addr == backend.addr
                    && !s.cut.is_cancelled()
            });
            match existing {
                Some(state) => state.clone(),
                None => {
                    known.retain(|s| s.backend.id != backend.id || s.in_flight() > 0);
                    let state = Arc::new(BackendState::new(backend));
                    known.push(state.clone());
                    state
                }
            }
        };
        let backends = route.backends.into_iter().map(&mut state_of).collect();
        let canary = route.canary.map(|canary| {
            let split = canary::Split::new(&canary);
            (
                split,
                canary.backends.into_iter().map(&mut state_of).collect(),
            )
        });
        self.shared.route.store(Arc::new(Table {
            backends,
            balance: route.balance,
            canary,
        }));
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
            state.cut.cancel();
            // Cut requests and tunnels end at their next poll; give them a moment to do so, so
            // that the instance is really free when this returns.
            let settle = tokio::time::Instant::now() + Duration::from_secs(2);
            state.wait_idle(settle).await;
        }
        state.close_idle();
        let routed = self.shared.route.load().routes(&state);
        if !routed {
            lock(&self.shared.known).retain(|s| !Arc::ptr_eq(s, &state));
        }
        cut
    }
}

/// The registry lock: a panic while holding it leaves plain data behind, still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(listener: Arc<TcpListener>, shared: Arc<Shared>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).keep_alive(true);
    let http = Arc::new(http);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: pause instead of spinning on the error.
                tracing::warn!("proxy accept failed: {err}; retrying in 50ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Counted here, not in the task: `close` must see it as soon as the loop has stopped.
        let open = shared.clients.open();
        let shared = shared.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let client = forward::Client {
                ip: hyper::header::HeaderValue::from_str(&peer.ip().to_string())
                    .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("unknown")),
            };
            let service = {
                let open = open.clone();
                service_fn(move |req| {
                    let response = forward::handle(shared.clone(), client.clone(), req);
                    let open = open.clone();
                    async move { response.await.map(|r| open.answer(r)) }
                })
            };
            let conn = std::pin::pin!(http
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades());
            let served = open.serve(conn, |conn| conn.as_mut().graceful_shutdown());
            if let Err(err) = served.await {
                tracing::debug!(%peer, "client connection ended: {err}");
            }
        });
    }
}
