//! Blue-green, as one straight line: start the new instances beside the old → wait until they are
//! healthy (deadline) → swap the route → swap `dest/current` → drain the old → stop the old →
//! prune old releases. Each step is a function named after it; any failure before the swap stops
//! the candidates and leaves the old release serving, untouched.
//!
//! The rollout runs as its own task. The steps that change what the app *is* (recording and
//! starting candidates, the switch) are done by the app task on request ([`Link`]), so the app's
//! record has a single owner; everything slow (waiting, draining, stopping) happens here.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::protocol::app::Strategy;
use crate::protocol::layout;
use crate::protocol::{AppSpec, DeployOutcome, DeployRequest, ErrorKind, ErrorReply, Progress};
use crate::supervisor::app::instance::{InstanceHandle, Lifecycle, View};
use crate::supervisor::app::{AppShared, Link, Switched};
use crate::supervisor::canary::{self, Decision};
use crate::supervisor::releases;
use crate::supervisor::store::AppRecord;

/// Why a rollout runs; it changes the words, what is marked bad on success, nothing else.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Deploy,
    /// `cutover rollback`: the release rolled away from is marked bad once the rollback is live.
    Rollback {
        from: Option<String>,
    },
    /// The live release crash-looped after its switch.
    AutoRollback {
        from: String,
        reason: String,
    },
}

impl Kind {
    /// The release to mark bad, and why, once this rollout is live.
    pub fn rolled_away_from(&self) -> Option<(String, String)> {
        match self {
            Kind::Deploy => None,
            Kind::Rollback { from } => from
                .clone()
                .map(|f| (f, "rolled back by the operator".to_owned())),
            Kind::AutoRollback { from, reason } => Some((from.clone(), reason.clone())),
        }
    }
}

impl Kind {
    /// How `status` names the rollout in progress: "deploying 1.4.2", "rolling back to 1.4.1".
    pub fn doing(&self, version: &str) -> String {
        match self {
            Kind::Deploy => format!("deploying {version}"),
            Kind::Rollback { .. } => format!("rolling back to {version}"),
            Kind::AutoRollback { .. } => format!("automatically rolling back to {version}"),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Deploy => "deploy",
            Kind::Rollback { .. } => "rollback",
            Kind::AutoRollback { .. } => "automatic rollback",
        })
    }
}

/// One rollout: what to run, and the ways to report and to reach the app task.
pub struct Rollout {
    pub shared: Arc<AppShared>,
    pub link: Link,
    pub kind: Kind,
    pub version: String,
    pub spec: AppSpec,
    pub dest: PathBuf,
    /// The live version when the rollout began.
    pub previous: Option<String>,
    pub progress: mpsc::Sender<Progress>,
    /// The step in progress, as `status` shows it.
    pub phase: watch::Sender<String>,
    /// `cutover promote` and `cutover abort`, for a canary.
    pub decisions: tokio::sync::Mutex<mpsc::Receiver<Decision>>,
}

/// Checks a deploy request against the app's record (absent for a new app), after what the
/// `app:` section says on its own (`AppSpec::check`, which the agent ran before fetching too).
/// Done by the app task before the rollout starts, because "busy" and "marked bad" are questions
/// about its record.
pub fn validate(request: &DeployRequest, record: Option<&AppRecord>) -> Result<(), ErrorReply> {
    let bad = |message: String| ErrorReply {
        kind: ErrorKind::BadRequest,
        message,
    };
    let spec = &request.app;
    spec.check().map_err(bad)?;
    if !layout::valid_version(&request.version) {
        return Err(bad(format!(
            "version {:?} cannot be a directory name; use letters, digits, '.', '_', '-', '+'",
            request.version
        )));
    }
    let dir = layout::release_dir(&request.dest, &request.version);
    if !dir.is_dir() {
        return Err(bad(format!(
            "release {} of {} is not in place at {}; the agent puts it there before deploying",
            request.version,
            spec.name,
            dir.display()
        )));
    }
    let Some(record) = record else {
        return Ok(());
    };
    if record.spec.listen != spec.listen {
        return Err(bad(format!(
            "{} listens on {}, not {}; run `cutover stop {}` first to move it",
            spec.name, record.spec.listen, spec.listen, spec.name
        )));
    }
    if record.dest != request.dest {
        return Err(bad(format!(
            "{} lives in {}, not {}; run `cutover stop {}` first to move it",
            spec.name,
            record.dest.display(),
            request.dest.display(),
            spec.name
        )));
    }
    if let Some(reason) = record
        .releases
        .get(&request.version)
        .and_then(|r| r.bad.as_ref())
    {
        return Err(bad(format!(
            "version {} is marked bad ({reason}); roll forward with a new version",
            request.version
        )));
    }
    Ok(())
}

/// The whole rollout. The answer is the outcome, or why it failed with the old release kept.
pub async fn run(rollout: Rollout) -> Result<DeployOutcome, String> {
    let candidates = start_candidates(&rollout).await?;
    if let Err(why) = wait_healthy(&rollout, &candidates).await {
        stop_candidates(&rollout, &candidates).await;
        return Err(why);
    }
    if rollout.is_canary() {
        if let Err(why) = canary::steps(&rollout).await {
            back_out(&rollout, &candidates, &why).await;
            return Err(why);
        }
    }
    let switched = swap_route(&rollout).await?;
    swap_current(&rollout).await;
    drain_old(&rollout, &switched.retiring).await;
    stop_old(&rollout, &switched.retiring).await;
    prune(&rollout, &switched.record).await;
    rollout.say(format!("{} is live", rollout.version)).await;
    Ok(DeployOutcome {
        app: rollout.shared.name.clone(),
        version: rollout.version.clone(),
        previous: rollout.previous.clone(),
    })
}

async fn start_candidates(rollout: &Rollout) -> Result<Vec<InstanceHandle>, String> {
    let n = rollout.spec.instances.max(1);
    rollout
        .say(format!("starting {n} instance(s) of {}", rollout.version))
        .await;
    rollout
        .link
        .start_candidates(&rollout.version, &rollout.spec)
        .await
}

/// Waits until every candidate is healthy. A candidate that exits meanwhile fails the rollout
/// at once ("crashed at boot"); so does the health deadline.
async fn wait_healthy(rollout: &Rollout, candidates: &[InstanceHandle]) -> Result<(), String> {
    let deadline = rollout.spec.health.deadline;
    let until = tokio::time::Instant::now() + deadline;
    let mut views: Vec<watch::Receiver<View>> = candidates.iter().map(|c| c.view.clone()).collect();
    let mut last_count = usize::MAX;
    loop {
        let current: Vec<View> = views
            .iter_mut()
            .map(|v| v.borrow_and_update().clone())
            .collect();
        if let Some((id, view)) = candidates.iter().zip(&current).find(|(_, v)| v.exits > 0) {
            let what = view
                .last_failure
                .clone()
                .unwrap_or_else(|| "exited".to_owned());
            return Err(format!("{} crashed at boot: {what}", id.id));
        }
        let healthy = current
            .iter()
            .filter(|v| matches!(v.lifecycle, Lifecycle::Healthy { .. }))
            .count();
        if healthy == candidates.len() {
            return Ok(());
        }
        if healthy != last_count {
            last_count = healthy;
            rollout
                .say(format!(
                    "waiting for health ({healthy}/{} healthy, deadline {})",
                    candidates.len(),
                    humantime::format_duration(deadline)
                ))
                .await;
        }
        let changed =
            futures_util::future::select_all(views.iter_mut().map(|v| Box::pin(v.changed())));
        if tokio::time::timeout_at(until, changed).await.is_err() {
            return Err(not_healthy_reason(candidates, deadline));
        }
    }
}

fn not_healthy_reason(candidates: &[InstanceHandle], deadline: Duration) -> String {
    let sick = candidates
        .iter()
        .map(|c| (c, c.view()))
        .find(|(_, v)| !matches!(v.lifecycle, Lifecycle::Healthy { .. }));
    let detail = match sick {
        Some((c, v)) => match v.last_failure {
            Some(why) => format!("{} is {}: {why}", c.id, v.lifecycle),
            None => format!("{} is still {}", c.id, v.lifecycle),
        },
        None => "the candidates flapped".to_owned(),
    };
    format!(
        "not healthy after {}: {detail}",
        humantime::format_duration(deadline)
    )
}

/// A canary that failed or was aborted: its share back to 0, its requests drained, then the
/// candidates stop; the stable release served throughout.
async fn back_out(rollout: &Rollout, candidates: &[InstanceHandle], why: &str) {
    rollout.say(format!("backing out the canary: {why}")).await;
    if let Err(e) = rollout.link.canary(None).await {
        tracing::warn!(app = %rollout.shared.name, "{e}");
    }
    let timeout = rollout.spec.drain_timeout;
    let proxy = &rollout.shared.proxy;
    let cut: u64 =
        futures_util::future::join_all(candidates.iter().map(|c| proxy.drain(&c.id, timeout)))
            .await
            .into_iter()
            .sum();
    if cut > 0 {
        rollout
            .say(format!(
                "drain deadline passed: {cut} request(s) or connection(s) to the canary cut"
            ))
            .await;
    }
    stop_candidates(rollout, candidates).await;
}

/// The failure path: the candidates go, the old instances never stopped serving.
async fn stop_candidates(rollout: &Rollout, candidates: &[InstanceHandle]) {
    rollout
        .say(format!("stopping the candidates of {}", rollout.version))
        .await;
    futures_util::future::join_all(candidates.iter().map(|c| c.stop())).await;
}

/// The app task makes the candidates live, routes to them and persists, in one step.
async fn swap_route(rollout: &Rollout) -> Result<Switched, String> {
    rollout
        .say(format!("switching traffic to {}", rollout.version))
        .await;
    rollout.link.switch(&rollout.version).await
}

/// `dest/current` follows the live release; a failure here is reported, not fatal, because the
/// proxy already serves the new release and undoing the switch would be worse.
async fn swap_current(rollout: &Rollout) {
    if let Err(e) = releases::swap_current(&rollout.dest, &rollout.version) {
        tracing::warn!(app = %rollout.shared.name, "{e}");
        rollout.say(format!("warning: {e}")).await;
    }
}

async fn drain_old(rollout: &Rollout, retiring: &[InstanceHandle]) {
    if retiring.is_empty() {
        return;
    }
    let timeout = rollout.spec.drain_timeout;
    rollout
        .say(format!(
            "draining {} old instance(s) (up to {})",
            retiring.len(),
            humantime::format_duration(timeout)
        ))
        .await;
    let deadline = Instant::now() + timeout;
    for old in retiring {
        old.drain(deadline).await;
    }
    let proxy = &rollout.shared.proxy;
    let cut =
        futures_util::future::join_all(retiring.iter().map(|old| proxy.drain(&old.id, timeout)))
            .await;
    let cut: u64 = cut.into_iter().sum();
    if cut > 0 {
        rollout
            .say(format!(
                "drain deadline passed: {cut} request(s) or connection(s) cut"
            ))
            .await;
    }
}

async fn stop_old(rollout: &Rollout, retiring: &[InstanceHandle]) {
    if retiring.is_empty() {
        return;
    }
    rollout
        .say(format!("stopping {} old instance(s)", retiring.len()))
        .await;
    futures_util::future::join_all(retiring.iter().map(|old| old.stop())).await;
}

/// Old release directories go beyond `keep_releases`; never the live one or the rollback target.
async fn prune(rollout: &Rollout, record: &AppRecord) {
    let record = record.clone();
    let name = rollout.shared.name.clone();
    let removed = tokio::task::spawn_blocking(move || {
        let target = releases::rollback_target(&record);
        let live = record.live.clone();
        let protect: Vec<&str> = live
            .iter()
            .chain(target.iter())
            .map(String::as_str)
            .collect();
        releases::prune(&record, &protect)
    })
    .await
    .unwrap_or_else(|e| {
        tracing::warn!(app = %name, "pruning releases failed: {e}");
        Vec::new()
    });
    if !removed.is_empty() {
        rollout
            .say(format!("pruned old releases: {}", removed.join(", ")))
            .await;
    }
}

impl Rollout {
    /// A canary runs for a deploy of a canary release over a live one; a rollback (health-gated,
    /// fast) and a first deploy (nothing to compare with) switch at once.
    fn is_canary(&self) -> bool {
        self.spec.strategy == Strategy::Canary
            && self.kind == Kind::Deploy
            && self.previous.is_some()
    }

    /// The operator's next decision, if one comes within `wait`.
    pub(crate) async fn decision_within(&self, wait: Duration) -> Option<Decision> {
        let mut decisions = self.decisions.lock().await;
        tokio::time::timeout(wait, decisions.recv())
            .await
            .ok()
            .flatten()
    }

    /// Updates what `status` shows of the step in progress, without a progress line.
    pub(crate) fn show(&self, message: String) {
        self.phase
            .send_replace(format!("{}: {message}", self.kind.doing(&self.version)));
    }

    /// One progress line: to the client (if it still listens), the log, and `status`.
    pub(crate) async fn say(&self, message: String) {
        tracing::info!(app = %self.shared.name, "{}", message);
        self.phase
            .send_replace(format!("{}: {message}", self.kind.doing(&self.version)));
        let progress = Progress {
            app: self.shared.name.clone(),
            message,
        };
        // A client that went away does not stop the rollout.
        let _ = self.progress.send(progress).await;
    }
}
