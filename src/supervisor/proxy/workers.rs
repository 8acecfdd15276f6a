//! The proxy's event loops, nginx's model: N threads, each a current-thread tokio runtime with its
//! own accept loop on the one listening socket (a dup of its fd), so that a client connection, its
//! requests and the instance connections they use (from that worker's own pool) all live on one
//! thread — no hand-off between tasks on different threads, no work stealing.
//!
//! The workers share only what `Proxy` shares with them (`state::ProxyState`): the route
//! (`ArcSwap`), the counters (atomics) and the drain signals (`Notify`, `CancellationToken`), all
//! runtime-agnostic, so `drain` and `stats` work from the caller's runtime.
//!
//! An accept loop takes a connection only when there is room for it
//! (`Downstream::wait_for_room`: the app's `max_connections`, the process's budget of
//! descriptors); otherwise the connection waits in the kernel's backlog; `connection` serves
//! each one it takes.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::connection::{self, Protocols};
use super::downstream::{OpenCount, OpenGuard};
use super::state::ProxyState;

/// The worker threads of one proxy. Dropping it stops them and waits until they let go of the
/// listening socket, so the address is free when the drop returns.
#[derive(Debug)]
pub(super) struct Workers {
    threads: Vec<JoinHandle<()>>,
    /// Cancelled by `start_accepting` (at once unless held): the accept loops begin.
    gate: CancellationToken,
    /// Cancelled by `Proxy::shutdown`: the accept loops end, open connections go on.
    accepting: CancellationToken,
    /// Cancelled on drop: the workers end, with every connection still open on them.
    stop: CancellationToken,
    /// Accept loops not ended yet, for `accepting_stopped`.
    loops: Arc<Loops>,
}

/// How many workers may still accept a connection.
#[derive(Debug, Default)]
struct Loops {
    running: AtomicUsize,
    ended: Notify,
}

/// How many more connections than another worker a worker may hold before it pauses accepting.
const BALANCE_SLACK: usize = 2;
/// How long it pauses: the others, woken by the same connection, take it meanwhile; if they are
/// all busy, the connection waits no longer than this.
const BALANCE_PAUSE: Duration = Duration::from_millis(1);

/// The first pause after an accept failed; it doubles up to the max while accepts keep failing.
const ACCEPT_PAUSE_FIRST: Duration = Duration::from_millis(50);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Connections the kernel queues for the proxy before it accepts them (Linux caps it at
/// `net.core.somaxconn`, 4096 on current kernels). A burst of thousands of clients at once (all
/// of them reconnecting after a network blip) overflows a short queue, and each connection that
/// overflows waits out a retransmission of its handshake: 1 s, then 3, 7, 15 s.
const BACKLOG: u32 = 4096;

/// A listening socket on `addr` with the proxy's backlog.
pub(super) fn listen_on(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted proxy binds at once, whatever TIME_WAITs remain.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// One worker per core, as nginx's `worker_processes auto`.
pub(super) fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Workers {
    /// Starts `count` workers (at least one) accepting on `listener`.
    /// `held`: the workers accept nothing before `start_accepting`.
    pub fn start(
        listener: std::net::TcpListener,
        proxy: Arc<ProxyState>,
        count: usize,
        held: bool,
    ) -> std::io::Result<Workers> {
        listener.set_nonblocking(true)?;
        let gate = CancellationToken::new();
        if !held {
            gate.cancel();
        }
        let accepting = CancellationToken::new();
        let stop = CancellationToken::new();
        let count = count.max(1);
        let loops = Arc::new(Loops {
            running: AtomicUsize::new(count),
            ended: Notify::new(),
        });
        let mut workers = Workers {
            threads: Vec::new(),
            gate: gate.clone(),
            accepting: accepting.clone(),
            stop: stop.clone(),
            loops: loops.clone(),
        };
        let mut listeners = Vec::with_capacity(count);
        for _ in 1..count {
            listeners.push(listener.try_clone()?);
        }
        listeners.push(listener);
        let open_counts: Arc<[Arc<OpenCount>]> =
            (0..count).map(|_| Arc::new(OpenCount::default())).collect();
        for (index, listener) in listeners.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let worker = Worker {
                index,
                open_counts: open_counts.clone(),
                proxy: proxy.clone(),
                gate: gate.clone(),
                accepting: accepting.clone(),
                stop: stop.clone(),
                loops: loops.clone(),
            };
            // On error the workers started so far are stopped by `workers`' drop.
            let thread = std::thread::Builder::new()
                .name(format!("cutover-proxy-{index}"))
                .spawn(move || {
                    runtime.block_on(worker.run(listener));
                    // Connections still open (after a drop) are closed with their tasks here.
                    runtime.shutdown_background();
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    pub fn start_accepting(&self) {
        self.gate.cancel();
    }

    pub fn stop_accepting(&self) {
        self.accepting.cancel();
    }

    /// Waits until no worker can accept a connection any more (after `stop_accepting`).
    pub async fn accepting_stopped(&self) {
        loop {
            let ended = self.loops.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.loops.running.load(Ordering::Acquire) == 0 {
                return;
            }
            ended.await;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.accepting.cancel();
        self.stop.cancel();
        let me = std::thread::current().id();
        for thread in self.threads.drain(..) {
            // A worker never owns its own proxy, but a join on itself would hang forever.
            if thread.thread().id() != me {
                let _ = thread.join();
            }
        }
    }
}

struct Worker {
    index: usize,
    /// Every worker's open connections, this one's at `index`: for balancing the accepts.
    open_counts: Arc<[Arc<OpenCount>]>,
    proxy: Arc<ProxyState>,
    gate: CancellationToken,
    accepting: CancellationToken,
    stop: CancellationToken,
    loops: Arc<Loops>,
}

impl Worker {
    async fn run(self, listener: std::net::TcpListener) {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!("proxy worker {} cannot use its listener: {err}", self.index);
                return;
            }
        };
        let open_count = self.open_counts[self.index].clone();
        let accepted = async {
            tokio::select! {
                _ = self.gate.cancelled() => {}
                _ = self.accepting.cancelled() => return,
            }
            tokio::select! {
                _ = self.accept_loop(listener, &open_count) => {}
                _ = self.accepting.cancelled() => {}
            }
        };
        let stopped = tokio::select! {
            _ = accepted => false,
            _ = self.stop.cancelled() => true,
        };
        // The listener is closed with the accept loop: every connection it took is counted.
        if self.loops.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.loops.ended.notify_waiters();
        }
        if stopped {
            return;
        }
        // No longer accepting (the listener is closed): serve what is open, then end.
        loop {
            let none_left = open_count.none_left.notified();
            tokio::pin!(none_left);
            none_left.as_mut().enable();
            if open_count.count.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::select! {
                _ = none_left => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    fn ahead_of_others(&self, open_count: &OpenCount) -> bool {
        let mine = open_count.count.load(Ordering::Relaxed);
        self.open_counts
            .iter()
            .any(|other| other.count.load(Ordering::Relaxed) + BALANCE_SLACK < mine)
    }

    async fn accept_loop(&self, listener: TcpListener, open_count: &Arc<OpenCount>) {
        let protocols = Protocols::new();
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        let downstream = &self.proxy.downstream;
        // While accepts fail: the next pause, and whether it was said.
        let mut pause = ACCEPT_PAUSE_FIRST;
        let mut failing = false;
        loop {
            // Every worker is woken by a new connection and the first to call accept takes it: a
            // worker already holding more than its share lets the others go first for a moment,
            // so that a burst of connections does not all land on one thread.
            if self.ahead_of_others(open_count) {
                tokio::time::sleep(BALANCE_PAUSE).await;
            }
            // Two loads while there is room.
            downstream
                .wait_for_room(self.proxy.limits.max_connections(), addr)
                .await;
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                // The peer gave up while in the backlog: nothing to wait for.
                Err(err) if per_connection(&err) => continue,
                Err(err) => {
                    // Out of descriptors or memory (the budget should have spared them) and the
                    // like: make room, and never spin on it — the connection stays in the
                    // backlog, so the listener stays readable.
                    if !failing {
                        tracing::warn!("proxy on {addr}: accept failed: {err}; closing an idle connection and waiting for one to end (said once)");
                        failing = true;
                    }
                    downstream.starved(pause).await;
                    pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                    continue;
                }
            };
            if failing {
                tracing::info!("proxy on {addr}: accepting again");
                failing = false;
                pause = ACCEPT_PAUSE_FIRST;
            }
            let _ = stream.set_nodelay(true);
            let guard = OpenGuard::new(open_count.clone());
            // Counted here, not in the task: `close` must see it as soon as the loop has stopped.
            let downstream_conn = downstream.open(self.proxy.limits.get());
            let open_count = open_count.clone();
            let proxy = self.proxy.clone();
            let protocols = protocols.clone();
            let worker = self.index;
            tokio::spawn(async move {
                let _guard = guard;
                connection::serve(
                    proxy,
                    worker,
                    (stream, peer),
                    downstream_conn,
                    open_count,
                    protocols,
                )
                .await;
            });
        }
    }
}

/// Errors of one connection that left the backlog before it was accepted, not of the listener.
fn per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
