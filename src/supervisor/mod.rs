//! The supervisor: a resident daemon that runs each app's instances behind its own proxy,
//! health-checks them, and runs the blue-green and rollback state machines.
//!
//! [`run`] is the whole daemon, mini-redis style: it takes its listener, its state directory and a
//! shutdown future, so a test can start one in a temp dir. [`bind_socket`] makes the listener.
//! [`run_with`] is the same with the sockets of systemd or of a previous supervisor
//! (`listeners`, `handover`), and ends either on the shutdown future or by handing over.

pub mod acme;
pub mod admin;
pub mod app;
pub mod apps;
pub mod control;
pub mod events;
pub mod fds;
pub mod handover;
pub mod health;
mod health_check;
pub mod instance;
pub mod instance_port;
pub mod lifecycle;
pub mod listeners;
pub mod process;
pub mod proxy;
pub mod recovery;
pub mod rollout;
pub mod sharing;
pub mod socket;
pub mod store;
pub mod strays;
pub mod upstream_tls;

use std::future::Future;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use admin::Site;
use apps::{Apps, AppsSetup};
use events::Events;
use handover::{Door, Predecessor};
use listeners::Listeners;

pub use socket::{bind_socket, BindError};

/// Runs the supervisor until `shutdown` completes: starts the apps from `state_dir` (re-adopting
/// live instances), serves the control socket, then shuts the apps down.
///
/// Shutting down leaves the app processes running, so a restarted supervisor takes them back;
/// `cutover stop APP` is how an app is stopped.
pub async fn run(
    listener: UnixListener,
    state_dir: PathBuf,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let daemon = Daemon {
        control: listener,
        state_dir,
        inherited: Listeners::default(),
        predecessor: None,
        admin: None,
    };
    run_with(daemon, shutdown).await.map(|_| ())
}

/// Everything [`run_with`] starts from.
#[derive(Debug)]
pub struct Daemon {
    /// The control socket, bound by [`bind_socket`] or inherited.
    pub control: UnixListener,
    pub state_dir: PathBuf,
    /// App sockets passed by systemd or by the previous supervisor.
    pub inherited: Listeners,
    /// The supervisor this one takes over from, told once this one serves.
    pub predecessor: Option<Predecessor>,
    /// The admin address's socket (`--metrics-listen`), bound or handed over; `None`: off.
    pub admin: Option<std::net::TcpListener>,
}

/// How [`run_with`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// On the shutdown future: apps let go of, client connections closed, sockets closed.
    Stopped,
    /// A successor took the sockets (the control socket too: its file is the successor's now).
    HandedOver,
}

/// Runs the supervisor until `shutdown` completes or a successor takes over (`cutover supervise
/// --take-over`, on `STATE/handover.sock`). Apps serve on `daemon.inherited` sockets where one
/// matches; a failed hand-over takes the apps back and carries on.
pub async fn run_with(
    daemon: Daemon,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Ending> {
    let Daemon {
        mut control,
        state_dir,
        mut inherited,
        mut predecessor,
        admin,
    } = daemon;
    let process_started = SystemTime::now();
    let handovers = predecessor.as_ref().map_or(0, Predecessor::handovers);
    let events = Arc::new(Events::new(handovers));
    let admin_addr = match &admin {
        Some(listener) => Some(
            listener
                .local_addr()
                .context("reading the admin address's socket")?,
        ),
        None => None,
    };
    let acme = acme::Manager::default();
    let setup = AppsSetup {
        events: events.clone(),
        admin: admin_addr,
        acme: acme.clone(),
    };
    let mut left_over: Option<apps::Released> = None;
    tokio::pin!(shutdown);
    loop {
        // The door first: it is also what keeps two supervisors off one state dir.
        let started = match Door::open(&state_dir) {
            Ok(door) => Apps::start_with(&state_dir, std::mem::take(&mut inherited), setup.clone())
                .await
                .map(|apps| (door, apps))
                .map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        let (door, apps) = match started {
            Ok(started) => started,
            Err(e) => {
                if let Some(predecessor) = predecessor.take() {
                    predecessor.failed(format!("{e:#}")).await;
                }
                return Err(e).with_context(|| {
                    format!("starting the supervisor from {}", state_dir.display())
                });
            }
        };
        if let Some(predecessor) = predecessor.take() {
            predecessor.serving().await;
        }
        // Only now: a predecessor orders no more once it has handed over.
        acme.allow(true);
        if let Some(released) = left_over.take() {
            // Back after a failed hand-over: the old proxies let their clients go.
            tokio::spawn(async move { apps::close_all(&released.apps, apps::Leave::Drain).await });
        }
        // Our own copy: serving stops by dropping the listener, the socket must stay open.
        let control_fd = control
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the control socket")?;
        let admin_stop = CancellationToken::new();
        if let (Some(listener), Some(addr)) = (&admin, admin_addr) {
            let site = Arc::new(Site {
                apps: apps.clone(),
                events: events.clone(),
                started: process_started,
                addr,
            });
            let listener = listener
                .try_clone()
                .context("duplicating the admin address's socket")?;
            let stop = admin_stop.clone();
            tracing::info!("admin address: http://{addr}/metrics");
            tokio::spawn(async move { admin::serve(&listener, site, stop).await });
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let stop = async {
            let why = tokio::select! {
                () = &mut shutdown => None,
                successor = door.requested() => Some(successor),
            };
            let _ = stop_tx.send(why);
        };
        control::serve(control, apps.clone(), stop).await;
        admin_stop.cancel();
        acme.allow(false);
        let Ok(Some(successor)) = stop_rx.await else {
            tracing::info!(
                "shutting down: app processes keep running and are re-adopted on restart"
            );
            apps.shutdown().await;
            return Ok(Ending::Stopped);
        };
        // The successor binds its own door once it has the sockets.
        drop(door);
        let released = apps.release().await;
        let admin_fd = match &admin {
            Some(listener) => Some(
                listener
                    .as_fd()
                    .try_clone_to_owned()
                    .context("duplicating the admin address's socket")?,
            ),
            None => None,
        };
        match successor
            .hand_over(control_fd, admin_fd, events.handovers(), released)
            .await
        {
            Ok(()) => return Ok(Ending::HandedOver),
            Err(back) => {
                let back = *back;
                back.control
                    .set_nonblocking(true)
                    .context("serving the control socket again")?;
                control = UnixListener::from_std(back.control)
                    .context("serving the control socket again")?;
                inherited = back.listeners;
                left_over = Some(back.released);
            }
        }
    }
}
