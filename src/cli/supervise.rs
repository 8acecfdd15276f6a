//! `cutover supervise`: runs the supervisor in the foreground until SIGTERM or SIGINT, or until a
//! newer one takes over.
//!
//! Meant to run under systemd (or any service manager): it logs to stderr, binds the control
//! socket (`--socket`), keeps its state in `--state-dir`, and on a stop signal leaves the app
//! processes running so that the next start takes them back. Sockets passed by systemd socket
//! activation (`LISTEN_FDS`) are used instead of binding; `--take-over` takes the sockets of a
//! supervisor already running on the same state dir, so that no connection is refused.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use super::logging;
use super::GlobalArgs;
use crate::supervisor::{self, admin, fds, handover, listeners::Listeners, Daemon, Ending};

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// Take over from the supervisor running on this state dir, if one does: its listening
    /// sockets (apps' and control) are handed over and its app processes re-adopted, so no
    /// connection is refused; it exits once this one serves. Without one, start as usual.
    #[arg(long)]
    pub take_over: bool,
    /// Serve Prometheus metrics (`/metrics`) on this admin address, e.g. 127.0.0.1:9180; never
    /// an app's `listen`. Off unless given
    #[arg(long, env = "CUTOVER_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

pub fn run(args: SuperviseArgs, global: &GlobalArgs) -> ExitCode {
    match supervise(&args, global) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            logging::fatal(
                global.log_format,
                "cutover supervise",
                format_args!("{err:#}"),
            );
            ExitCode::FAILURE
        }
    }
}

fn supervise(args: &SuperviseArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let socket = global.socket();
    let state_dir = global.state_dir();
    // Before the runtime starts any thread: it reads and clears LISTEN_* in the environment.
    let mut inherited = Listeners::from_systemd();
    // Before any proxy: their shared connection budget is derived from the limit.
    raise_fd_limit();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        // Signal handlers before the socket: a stop signal that arrives once clients can connect
        // must shut down cleanly, not kill the process mid-write.
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        // SIGHUP's default would end the supervisor and with it every app's public port: a
        // logrotate `postrotate kill -HUP` (the usual habit) must not do that. Nothing needs a
        // reload (the access log follows a rotation by itself), so it is only said.
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!(
                    "SIGHUP received: nothing to reload (access logs follow rotation by themselves); \
                     stop with SIGTERM"
                );
            }
        });
        let mut predecessor = if args.take_over {
            match handover::take_over(&state_dir).await? {
                Some((predecessor, handed)) => {
                    inherited.merge(handed);
                    Some(predecessor)
                }
                None => None,
            }
        } else {
            None
        };
        // Handed over by the predecessor when it had the same address; any other is closed.
        let admin = match (inherited.take_admin(args.metrics_listen), args.metrics_listen) {
            (Some(passed), _) => Some(passed),
            (None, Some(addr)) => match admin::bind(addr) {
                Ok(listener) => Some(listener),
                Err(e) => {
                    // The running supervisor takes its apps back at once rather than waiting.
                    if let Some(predecessor) = predecessor.take() {
                        predecessor.failed(e.to_string()).await;
                    }
                    return Err(e.into());
                }
            },
            (None, None) => None,
        };
        let (listener, ours) = match inherited.take_control(&socket) {
            Some(listener) => {
                listener
                    .set_nonblocking(true)
                    .context("using the passed control socket")?;
                let listener = tokio::net::UnixListener::from_std(listener)
                    .context("using the passed control socket")?;
                (listener, false)
            }
            None => match supervisor::bind_socket(&socket) {
                Ok(listener) => (listener, true),
                Err(supervisor::BindError::AlreadyRunning(path)) if args.take_over => {
                    anyhow::bail!(
                        "a supervisor listens on {} but offers no hand-over on {} (an older \
                         cutover, or another --state-dir): stop it first",
                        path.display(),
                        handover::socket_path(&state_dir).display()
                    )
                }
                Err(supervisor::BindError::AlreadyRunning(path)) => anyhow::bail!(
                    "another supervisor is already listening on {}: stop it first, use another \
                     --socket, or replace it without a gap with `cutover supervise --take-over`",
                    path.display()
                ),
                Err(e) => return Err(e.into()),
            },
        };
        // Only a socket file this process made is removed at exit: systemd's stays for the
        // next start, and a successor's is the successor's.
        let bound = ours
            .then(|| std::fs::metadata(&socket).ok().map(|m| inode(&m)))
            .flatten();
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        let daemon = Daemon {
            control: listener,
            state_dir,
            inherited,
            predecessor,
            admin,
        };
        let result = supervisor::run_with(daemon, shutdown).await;
        // Remove our socket file so clients say "no supervisor" at once; never one that a newer
        // supervisor bound in the meantime, nor the one a successor serves on now.
        let current = std::fs::metadata(&socket).ok().map(|m| inode(&m));
        if bound.is_some() && current == bound && !matches!(result, Ok(Ending::HandedOver)) {
            let _ = std::fs::remove_file(&socket);
        }
        if let Ok(Ending::HandedOver) = result {
            tracing::info!("handed over to the new supervisor; exiting");
        }
        result.map(|_| ())
    })
}

/// Raises the soft limit on open files to the hard one (systemd's default soft limit of 1024
/// lets a thousand idle connections starve the control socket and the health checks), and says
/// what the proxies may hold.
fn raise_fd_limit() {
    match fds::raise_soft_limit() {
        Ok(raised) => {
            let budget = fds::connection_budget(raised.now);
            let how = if raised.now > raised.before {
                format!("raised from {} to {}", raised.before, raised.now)
            } else {
                format!("{} (the hard limit)", raised.now)
            };
            tracing::info!(
                "open files: soft limit {how}; the proxies share {budget} client connections, the rest is kept for the control socket, health checks and instances"
            );
            if raised.now < 4096 {
                tracing::warn!(
                    "the hard limit on open files is only {}: raise it (LimitNOFILE= in the unit, `ulimit -Hn`) to serve more than {budget} client connections",
                    raised.now
                );
            }
        }
        Err(err) => tracing::warn!(
            "cannot raise the soft limit on open files ({err}); the proxies share {} client connections",
            fds::connection_budget(fds::soft_limit())
        ),
    }
}

fn inode(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}
