//! Health checks of one instance: HTTP GET or TCP connect on an interval, consecutive pass/fail
//! thresholds, `min_healthy_time`, and the last failure's reason for `status`.
//!
//! One task per instance, for the instance's whole life: the deploy waits on it to go healthy, and
//! afterwards the supervisor watches the same reports to notice an instance that turned bad.
//!
//! A check the supervisor could not even try — no descriptor, memory or local port left to
//! connect with — says nothing of the instance: it is skipped, not counted, and said once.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::protocol::app::HealthSpec;
use crate::supervisor::health_check::{connect, http_get, Failure};
pub use crate::supervisor::upstream_tls::Wire;

/// What to probe.
#[derive(Debug, Clone)]
pub enum Probe {
    /// GET `path`, spoken as `wire` says (HTTP/1.1, h2c, HTTP/2 over TLS); an error: the wire
    /// could not be set up (the CA of `upstream_tls` unreadable), and every check fails with it.
    Http {
        addr: SocketAddr,
        path: String,
        wire: Result<Wire, String>,
    },
    Tcp {
        addr: SocketAddr,
    },
}

impl Probe {
    /// The probe a `health:` section asks for, against an instance listening on `addr` and
    /// spoken to as `wire` says.
    pub fn for_spec(spec: &HealthSpec, addr: SocketAddr, wire: Result<Wire, String>) -> Probe {
        match &spec.path {
            Some(path) => Probe::Http {
                addr,
                path: path.clone(),
                wire,
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

impl Drop for Checker {
    fn drop(&mut self) {
        self._task.abort();
    }
}

impl Checker {
    /// Starts checking `probe` with the thresholds of `spec` (interval, timeout, healthy,
    /// unhealthy, min_healthy_time). The first check runs at once.
    pub fn start(probe: Probe, spec: &HealthSpec) -> Checker {
        let initial = HealthReport {
            health: Health::Starting,
            last_failure: None,
        };
        let (tx, reports) = watch::channel(initial);
        let task = tokio::spawn(run(probe, Thresholds::from(spec), tx));
        Checker {
            reports,
            _task: task,
        }
    }

    /// Waits until the instance is healthy, or returns the reason it is not by `deadline`.
    pub async fn wait_healthy(&mut self, deadline: Duration) -> Result<(), String> {
        let healthy = async {
            self.reports
                .wait_for(|r| r.health == Health::Healthy)
                .await
                .map(drop)
        };
        match tokio::time::timeout(deadline, healthy).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("health checker stopped".to_owned()),
            Err(_) => {
                let report = self.reports.borrow();
                let waited = humantime::format_duration(deadline);
                Err(match &report.last_failure {
                    Some(reason) => format!("not healthy after {waited}: {reason}"),
                    None => format!(
                        "not healthy after {waited}: checks pass but not for long enough yet"
                    ),
                })
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Thresholds {
    interval: Duration,
    timeout: Duration,
    healthy: u32,
    unhealthy: u32,
    min_healthy_time: Duration,
}

impl From<&HealthSpec> for Thresholds {
    fn from(spec: &HealthSpec) -> Self {
        Thresholds {
            // A zero interval would make tokio's interval panic and the loop spin.
            interval: spec.interval.max(Duration::from_millis(10)),
            timeout: spec.timeout,
            healthy: spec.healthy.max(1),
            unhealthy: spec.unhealthy.max(1),
            min_healthy_time: spec.min_healthy_time,
        }
    }
}

/// The verdict from a run of check results; pure, so the thresholds are unit-tested.
#[derive(Debug)]
struct Verdict {
    limits: Thresholds,
    report: HealthReport,
    passes: u32,
    fails: u32,
    /// When the current run of passes began: `min_healthy_time` counts from there.
    streak_since: Option<Instant>,
    /// It has been healthy once: later failures are the running instance's own.
    ever_healthy: bool,
}

impl Verdict {
    fn new(limits: Thresholds) -> Verdict {
        Verdict {
            limits,
            report: HealthReport {
                health: Health::Starting,
                last_failure: None,
            },
            passes: 0,
            fails: 0,
            streak_since: None,
            ever_healthy: false,
        }
    }

    fn record(&mut self, result: Result<(), String>, now: Instant) {
        match result {
            Ok(()) => {
                self.fails = 0;
                self.passes = self.passes.saturating_add(1);
                let since = *self.streak_since.get_or_insert(now);
                let long_enough = now.duration_since(since) >= self.limits.min_healthy_time;
                if self.passes >= self.limits.healthy && long_enough {
                    if !self.ever_healthy {
                        // Failures while it booted (nothing listening yet) are not the
                        // running instance's: `status` would show them for good.
                        self.report.last_failure = None;
                        self.ever_healthy = true;
                    }
                    self.report.health = Health::Healthy;
                }
            }
            Err(reason) => {
                self.passes = 0;
                self.streak_since = None;
                self.fails = self.fails.saturating_add(1);
                if self.fails >= self.limits.unhealthy {
                    self.report.health = Health::Unhealthy {
                        reason: reason.clone(),
                    };
                }
                self.report.last_failure = Some(reason);
            }
        }
    }
}

async fn run(probe: Probe, limits: Thresholds, tx: watch::Sender<HealthReport>) {
    let mut verdict = Verdict::new(limits);
    let mut ticks = tokio::time::interval(limits.interval);
    // A check slower than the interval delays the next one instead of firing a burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut skipping = false;
    loop {
        ticks.tick().await;
        let result = match check(&probe, limits.timeout).await {
            Err(Failure::Local(why)) => {
                if !skipping {
                    tracing::warn!(?probe, "health check skipped, not counted against the instance: {why} (said once until checks run again)");
                    skipping = true;
                }
                continue;
            }
            Err(Failure::Instance(reason)) => Err(reason),
            Ok(()) => Ok(()),
        };
        if std::mem::take(&mut skipping) {
            tracing::info!(?probe, "health checks run again");
        }
        let before = verdict.report.health.clone();
        verdict.record(result, Instant::now());
        if verdict.report.health != before {
            tracing::info!(
                ?probe,
                "health now {:?}, was {before:?}",
                verdict.report.health
            );
        }
        tx.send_if_modified(|report| {
            let changed = *report != verdict.report;
            if changed {
                *report = verdict.report.clone();
            }
            changed
        });
        if tx.is_closed() {
            return;
        }
    }
}

/// One check.
async fn check(probe: &Probe, timeout: Duration) -> Result<(), Failure> {
    let attempt = async {
        match probe {
            Probe::Tcp { addr } => connect(*addr).await.map(drop),
            Probe::Http { addr, path, wire } => http_get(*addr, path, wire).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Instance(format!(
            "timed out after {}",
            humantime::format_duration(timeout)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(healthy: u32, unhealthy: u32, min_healthy_time: Duration) -> Thresholds {
        Thresholds {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy,
            unhealthy,
            min_healthy_time,
        }
    }

    #[test]
    fn consecutive_passes_make_healthy_and_a_failure_resets_the_run() {
        let t0 = Instant::now();
        let mut v = Verdict::new(limits(2, 2, Duration::ZERO));
        v.record(Ok(()), t0);
        assert_eq!(v.report.health, Health::Starting);
        v.record(Err("GET /healthz → 500".into()), t0);
        v.record(Ok(()), t0);
        assert_eq!(
            v.report.health,
            Health::Starting,
            "the failure reset the run"
        );
        v.record(Ok(()), t0);
        assert_eq!(v.report.health, Health::Healthy);
        assert_eq!(
            v.report.last_failure, None,
            "a failure while booting is forgotten once healthy"
        );
        // A failure of the running instance stays, even once it is healthy again.
        v.record(Err("GET /healthz → 503".into()), t0);
        v.record(Ok(()), t0);
        v.record(Ok(()), t0);
        assert_eq!(v.report.health, Health::Healthy);
        assert_eq!(v.report.last_failure.as_deref(), Some("GET /healthz → 503"));
    }

    #[test]
    fn consecutive_failures_make_unhealthy_with_the_last_reason() {
        let t0 = Instant::now();
        let mut v = Verdict::new(limits(1, 2, Duration::ZERO));
        v.record(Ok(()), t0);
        v.record(Err("connect to 127.0.0.1:1 refused".into()), t0);
        assert_eq!(v.report.health, Health::Healthy, "one failure is tolerated");
        v.record(Err("timed out after 2s".into()), t0);
        assert_eq!(
            v.report.health,
            Health::Unhealthy {
                reason: "timed out after 2s".into()
            }
        );
    }

    #[test]
    fn min_healthy_time_counts_from_the_first_pass_of_the_run() {
        let t0 = Instant::now();
        let mut v = Verdict::new(limits(2, 3, Duration::from_secs(5)));
        v.record(Ok(()), t0);
        v.record(Ok(()), t0 + Duration::from_secs(1));
        assert_eq!(v.report.health, Health::Starting);
        v.record(Ok(()), t0 + Duration::from_secs(5));
        assert_eq!(v.report.health, Health::Healthy);
    }
}
