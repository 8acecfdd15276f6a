//! Blue-green, as one straight line: start the new instances beside the old → wait until they are
//! healthy (deadline) → swap the route → swap `dest/current` → drain the old → stop the old →
//! prune old releases. Each step is a function named after it; any failure before the swap stops
//! the candidates and leaves the old release serving, untouched.
//!
//! The rollout runs as its own task. The steps that change what the app *is* (recording and
//! starting candidates, the switch) are done by the app task on request (through the rollout's
//! `AppTaskLink`), so the app's record has a single owner; everything slow (waiting, draining,
//! stopping) happens here. The contract both sides share is in `contract.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::protocol::layout;
use crate::protocol::{DeployOutcome, DeployRequest, ErrorKind, ErrorReply};
use crate::supervisor::instance::{InstanceHandle, Lifecycle, View};
use crate::supervisor::store::AppRecord;

use super::canary_steps;
use super::contract::{Rollout, Switchover};
use super::releases;

/// Checks a deploy request against the app's record (absent for a new app), after what the
/// `app:` section says on its own (`AppSpec::check`, which the agent ran before fetching too).
/// Done by the app task before the rollout starts, because "busy" and "marked bad" are questions
/// about its record. The answer is the app's public address, parsed once.
pub fn validate(
    request: &DeployRequest,
    record: Option<&AppRecord>,
) -> Result<SocketAddr, ErrorReply> {
    let bad = |message: String| ErrorReply {
        kind: ErrorKind::BadRequest,
        message,
    };
    let spec = &request.app;
    let listen = spec.check().map_err(bad)?;
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
        return Ok(listen);
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
    Ok(listen)
}

/// The whole rollout. The answer is the outcome, or why it failed with the old release kept.
pub async fn run(rollout: Rollout) -> Result<DeployOutcome, String> {
    let candidates = start_candidates(&rollout).await?;
    if let Err(why) = wait_healthy(&rollout, &candidates).await {
        stop_candidates(&rollout, &candidates).await;
        return Err(why);
    }
    if rollout.is_canary() {
        if let Err(why) = canary_steps::run(&rollout).await {
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
        app: rollout.app.name.clone(),
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
        tracing::warn!(app = %rollout.app.name, "{e}");
    }
    let timeout = rollout.spec.drain_timeout;
    let proxy = &rollout.app.proxy;
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
async fn swap_route(rollout: &Rollout) -> Result<Switchover, String> {
    rollout
        .say(format!("switching traffic to {}", rollout.version))
        .await;
    rollout.link.switch(&rollout.version).await
}

/// `dest/current` follows the live release; a failure here is reported, not fatal, because the
/// proxy already serves the new release and undoing the switch would be worse.
async fn swap_current(rollout: &Rollout) {
    if let Err(e) = releases::swap_current(&rollout.dest, &rollout.version) {
        tracing::warn!(app = %rollout.app.name, "{e}");
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
    let proxy = &rollout.app.proxy;
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
    let name = rollout.app.name.clone();
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
