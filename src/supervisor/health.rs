//! Health checks of one instance: HTTP GET or TCP connect on an interval, consecutive pass/fail
//! thresholds, `min_healthy_time`, and the last failure's reason for `status`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::protocol::app::HealthSpec;

/// What to probe.
#[derive(Debug, Clone)]
pub enum Probe {
    Http { addr: SocketAddr, path: String },
    Tcp { addr: SocketAddr },
}

impl Probe {
    /// The probe a `health:` section asks for, against an instance listening on `addr`.
    pub fn for_spec(spec: &HealthSpec, addr: SocketAddr) -> Probe {
        match &spec.path {
            Some(path) => Probe::Http {
                addr,
                path: path.clone(),
            },
            None => Probe::Tcp { addr },
        }
    }
}

/// The health of one instance as its checker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    /// Not yet `healthy` consecutive passes (plus `min_healthy_time`).
    Starting,
    Healthy,
    Unhealthy {
        reason: String,
    },
}

/// The latest verdict and the reason of the last failed check, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub health: Health,
    pub last_failure: Option<String>,
}

/// A running checker; dropping it stops the checks.
#[derive(Debug)]
pub struct Checker {
    pub reports: watch::Receiver<HealthReport>,
    _task: tokio::task::JoinHandle<()>,
}

impl Checker {
    /// Starts checking `probe` with the thresholds of `spec` (interval, timeout, healthy,
    /// unhealthy, min_healthy_time). The first check runs at once.
    pub fn start(probe: Probe, spec: &HealthSpec) -> Checker {
        let _ = (probe, spec);
        todo!("Checker::start")
    }

    /// Waits until the instance is healthy, or returns the reason it is not by `deadline`.
    pub async fn wait_healthy(&mut self, deadline: Duration) -> Result<(), String> {
        let _ = deadline;
        todo!("Checker::wait_healthy")
    }
}
