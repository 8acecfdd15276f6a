//! What an instance is doing and what it publishes: its [`Lifecycle`] (an enum that carries its
//! data, shown by `status` in short words) and the [`View`] its task sends after every change
//! (where it listens now, the proxy's backend for it, its process and its failures).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::supervisor::process::{ExitStatus, ProcessId};
use crate::supervisor::proxy::Backend;

/// Where an instance is in its life. Transitions are logged as "now X, was Y".
#[derive(Debug, Clone, PartialEq)]
pub enum Lifecycle {
    /// Running, not yet healthy.
    Starting {
        since: Instant,
    },
    Healthy {
        since: Instant,
    },
    Unhealthy {
        reason: String,
    },
    /// Down, restarting after `restart_in`.
    Exited {
        status: Option<ExitStatus>,
        restart_in: Duration,
    },
    /// Down again and again: restarts continue at the slowest pace.
    CrashLooping {
        reason: String,
        restart_in: Duration,
    },
    /// Taken out of the route; in-flight requests finish until `deadline`.
    Draining {
        deadline: Instant,
    },
    /// Stopped for good (by a rollout or `cutover stop`).
    Stopped {
        status: Option<ExitStatus>,
    },
}

impl fmt::Display for Lifecycle {
    /// The short words `cutover status` shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lifecycle::Starting { .. } => "starting",
            Lifecycle::Healthy { .. } => "healthy",
            Lifecycle::Unhealthy { .. } => "unhealthy",
            Lifecycle::Exited { .. } => "crashed",
            Lifecycle::CrashLooping { .. } => "crash-looping",
            Lifecycle::Draining { .. } => "draining",
            Lifecycle::Stopped { .. } => "stopped",
        })
    }
}

/// What the instance task publishes after every change.
#[derive(Debug, Clone)]
pub struct View {
    pub lifecycle: Lifecycle,
    /// Where it listens now; changes when its port was taken and it moved.
    pub addr: SocketAddr,
    /// The proxy's view of this instance at `addr`; the same `Arc` in every route keeps its
    /// counters, and a move makes a new one.
    pub backend: Arc<Backend>,
    /// The process serving now, if one runs.
    pub process: Option<ProcessId>,
    /// Times the process was started again after an exit.
    pub restarts: u32,
    /// Times a process of this instance ended on its own (a candidate with any is a boot crash).
    pub exits: u32,
    pub last_failure: Option<String>,
    /// Set while the instance is crash-looping: why, for `status` and the automatic rollback.
    pub crash_loop: Option<String>,
}
