//! One listening address of the proxy (`Front`): its socket, its worker threads and its client
//! connections, shared by the apps routed on it (each through its own `Proxy` handle, which
//! keeps the front alive). Binding, accepting, handing the socket over and closing are the
//! address's; routes and counters are each app's (`site`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::site::lock;
use super::state::ProxyState;
use super::workers::{self, Workers};

/// A listening address and its workers; dropping it closes the listener and stops its worker
/// threads (with the connections still open on them) before the drop returns.
#[derive(Debug)]
pub(super) struct Front {
    pub local_addr: SocketAddr,
    pub state: Arc<ProxyState>,
    workers: Workers,
    /// A copy of the listening socket for `listener`; `shutdown` lets go of it.
    listener: Mutex<Option<std::net::TcpListener>>,
}

impl Front {
    /// Binds `listen` with the proxy's backlog.
    pub fn bind(listen: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        workers::listen_on(listen)
            .and_then(|listener| listener.into_std())
            .map_err(|err| {
                std::io::Error::new(
                    err.kind(),
                    format!("cannot listen on {listen}: {err} (is another process using it?)"),
                )
            })
    }

    /// Serves on `listener` with `workers` threads (at least one), each running its own event
    /// loop and accepting from the same socket; `held`: not before `start_accepting`.
    pub fn start(
        listener: std::net::TcpListener,
        workers: usize,
        held: bool,
    ) -> std::io::Result<Front> {
        let local_addr = listener.local_addr()?;
        let copy = listener.try_clone()?;
        let workers = workers.max(1);
        let state = Arc::new(ProxyState::new(workers));
        let workers = Workers::start(listener, state.clone(), workers, held)?;
        Ok(Front {
            local_addr,
            state,
            workers,
            listener: Mutex::new(Some(copy)),
        })
    }

    pub fn start_accepting(&self) {
        self.workers.start_accepting();
    }

    pub fn shutdown(&self) {
        self.workers.stop_accepting();
        lock(&self.listener).take();
    }

    pub async fn stop_accepting(&self) {
        self.shutdown();
        self.workers.accepting_stopped().await;
    }

    pub fn listener(&self) -> std::io::Result<std::net::TcpListener> {
        lock(&self.listener)
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the proxy no longer listens"))?
            .try_clone()
    }

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
}
