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

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::protocol::app::HealthSpec;

/// What to probe.
#[derive(Debug, Clone)]
pub enum Probe {
    /// `h2c`: over HTTP/2 without TLS, for an app whose instances speak nothing else.
    Http {
        addr: SocketAddr,
        path: String,
        h2c: bool,
    },
    Tcp {
        addr: SocketAddr,
    },
}

impl Probe {
    /// The probe a `health:` section asks for, against an instance listening on `addr`.
    pub fn for_spec(spec: &HealthSpec, addr: SocketAddr, h2c: bool) -> Probe {
        match &spec.path {
            Some(path) => Probe::Http {
                addr,
                path: path.clone(),
                h2c,
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

/// Why a check did not pass.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The instance's: the reason shown to operators ("GET /healthz → 500").
    Instance(String),
    /// The supervisor's own: it could not even try.
    Local(String),
}

impl From<String> for Failure {
    fn from(reason: String) -> Self {
        Failure::Instance(reason)
    }
}

/// One check.
async fn check(probe: &Probe, timeout: Duration) -> Result<(), Failure> {
    let attempt = async {
        match probe {
            Probe::Tcp { addr } => connect(*addr).await.map(drop),
            Probe::Http { addr, path, h2c } => http_get(*addr, path, *h2c).await,
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

async fn connect(addr: SocketAddr) -> Result<TcpStream, Failure> {
    TcpStream::connect(addr)
        .await
        .map_err(|err| connect_failure(addr, &err))
}

fn connect_failure(addr: SocketAddr, err: &std::io::Error) -> Failure {
    use nix::errno::Errno;
    let local = [
        Errno::EMFILE,
        Errno::ENFILE,
        Errno::ENOBUFS,
        Errno::ENOMEM,
        Errno::EADDRNOTAVAIL,
    ];
    match err.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            Failure::Instance(format!("connect to {addr} refused"))
        }
        _ if err
            .raw_os_error()
            .is_some_and(|code| local.contains(&Errno::from_raw(code))) =>
        {
            Failure::Local(format!("cannot connect to {addr}: {err}"))
        }
        _ => Failure::Instance(format!("connect to {addr} failed: {err}")),
    }
}

async fn http_get(addr: SocketAddr, path: &str, h2c: bool) -> Result<(), Failure> {
    let stream = connect(addr).await?;
    let request = http::Request::get(format!("http://{addr}{path}"))
        .header(http::header::USER_AGENT, "cutover-health")
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("GET {path}: invalid path: {err}"))?;
    // The connection is driven here and dropped with the check: one connection per check, so
    // a check also proves the app still accepts connections.
    let outcome = if h2c {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|err| format!("GET {path} (HTTP/2): {err}"))?;
        let driver = tokio::spawn(conn);
        let outcome = sender.send_request(request).await;
        driver.abort();
        outcome
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| format!("GET {path}: {err}"))?;
        let driver = tokio::spawn(conn);
        let (mut parts, body) = request.into_parts();
        // Origin-form with a Host, as HTTP/1.1 servers expect.
        parts.uri = path
            .parse()
            .map_err(|err| format!("GET {path}: invalid path: {err}"))?;
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(&addr.to_string()).map_err(|e| e.to_string())?,
        );
        let outcome = sender
            .send_request(http::Request::from_parts(parts, body))
            .await;
        driver.abort();
        outcome
    };
    let response = outcome.map_err(|err| format!("GET {path}: {err}"))?;
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("GET {path} → {}", status.as_u16()).into())
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
    fn a_check_the_supervisor_could_not_try_is_not_the_instances_failure() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EADDRNOTAVAIL,
        ] {
            let err = std::io::Error::from_raw_os_error(errno);
            assert!(
                matches!(connect_failure(addr, &err), Failure::Local(_)),
                "{err}"
            );
        }
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(
            connect_failure(addr, &refused),
            Failure::Instance("connect to 127.0.0.1:8080 refused".into())
        );
        let unreachable = std::io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert!(matches!(
            connect_failure(addr, &unreachable),
            Failure::Instance(_)
        ));
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
