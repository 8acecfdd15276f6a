//! Running a plan: every target stages the release first (`stage`), then the staged nodes switch
//! batch by batch through their query handlers, each node gated on its own health, and a halt
//! reverts the nodes already updated.

use std::collections::BTreeMap;

use super::ask::{follow, gather, start_work};
use super::batches::{Plan, Target};
use super::inputs::{Options, Step};
use super::outcome::{NodeEnd, Progress, Report};
use super::stage;
use crate::fleet::serf::Serf;
use crate::fleet::wire::{self, Ack, RunState};

/// Stages the release on every target, then runs the plan batch by batch over the nodes that
/// staged; on too many failures, halts (before any switch when staging failed) and reverts the
/// nodes it updated.
pub async fn run(serf: &Serf, step: &Step, plan: Plan, opts: &Options, out: &Progress) -> Report {
    let r = &step.release;
    let mut report = Report {
        current: plan.current.clone(),
        unreachable: plan.unreachable.clone(),
        ..Report::default()
    };
    let mut updated: Vec<Target> = Vec::new();
    // Names this run in its queries, so that repeated copies start nothing twice on a node.
    let run_id = format!("{:016x}", rand::random::<u64>());
    let targets = stage::targets(&plan.batches);
    stage::stage_all(serf, step, &run_id, &targets, opts, out, &mut report).await;
    if let Some(why) = stage::halt_before_switch(&report, opts) {
        report.halted = Some(why);
        return report;
    }
    if opts.stage_only {
        out.say("--stage-only: switching nothing; run the rollout again without it to switch");
        return report;
    }
    // Nodes known to serve the app right now, kept up to date as nodes go out and come back.
    let mut serving = plan.serving;
    for (node, _) in &report.unreachable {
        serving -= usize::from(targets.iter().any(|t| t.node == *node && t.serving));
    }
    let batches = stage::staged_batches(plan.batches, &report);
    let total = batches.len();
    for (i, batch) in batches.into_iter().enumerate() {
        let out_of_service = batch.iter().filter(|t| t.serving).count();
        if out_of_service > 0 && serving.saturating_sub(out_of_service) < opts.min_healthy {
            report.halted = Some(format!(
                "only {serving} node(s) serve {}: batch {} would leave fewer than --min-healthy {}",
                r.app,
                i + 1,
                opts.min_healthy
            ));
            break;
        }
        let names: Vec<&str> = batch.iter().map(|t| t.node.as_str()).collect();
        out.say(&format!(
            "batch {}/{total}: deploying {} {} to {}",
            i + 1,
            r.app,
            r.version,
            names.join(", ")
        ));
        let outcome = deploy_batch(serf, step, &run_id, &batch, opts, out).await;
        for target in batch {
            match outcome.get(&target.node) {
                Some(NodeEnd::Serving) => {
                    serving += usize::from(!target.serving);
                    report.updated.push(target.node.clone());
                    updated.push(target);
                }
                Some(NodeEnd::Failed(why)) | Some(NodeEnd::Refused(why)) => {
                    report.failed.push((target.node.clone(), why.clone()));
                }
                Some(NodeEnd::Unreachable(why)) => {
                    serving -= usize::from(target.serving);
                    report.unreachable.push((target.node.clone(), why.clone()));
                }
                None => {}
            }
        }
        if report.failed.len() > opts.max_failures {
            report.halted = Some(format!(
                "{} node(s) failed (more than --max-failures {})",
                report.failed.len(),
                opts.max_failures
            ));
            break;
        }
    }
    if report.halted.is_some() && !updated.is_empty() {
        out.say(&format!(
            "halted: reverting {} node(s) to their previous {}",
            updated.len(),
            r.app
        ));
        report.reverted = revert(serf, step, &run_id, &updated, opts, out).await;
    }
    report
}

/// Sends the deploy to a batch and follows each node until it serves, fails or goes silent.
async fn deploy_batch(
    serf: &Serf,
    step: &Step,
    run_id: &str,
    batch: &[Target],
    opts: &Options,
    out: &Progress,
) -> BTreeMap<String, NodeEnd> {
    let r = &step.release;
    let nodes: Vec<String> = batch.iter().map(|t| t.node.clone()).collect();
    let payload = wire::with_run(&step.url, run_id);
    let (pending, mut ends) = start_work(
        serf,
        wire::QUERY_DEPLOY,
        "deploy",
        &payload,
        &nodes,
        opts,
        out,
    )
    .await;
    let version = r.version.clone();
    let app = r.app.clone();
    let settled = follow(serf, &pending, opts, out, move |_, state| {
        if let Some(a) = state.app(&app).filter(|a| a.serves(&version)) {
            return Some(Ok(format!(
                "serves {} {} ({}/{} healthy)",
                app, version, a.ok, a.of
            )));
        }
        // The handler put this run on record when it accepted the deploy, so a failed deploy on
        // record is ours; an unnamed one failed before the node could read the manifest.
        let last = state.last.as_ref()?;
        let ours =
            last.op == "deploy" && (last.app.is_empty() || (last.app == app && last.v == version));
        (ours && last.s == RunState::Failed).then(|| Err(last.m.clone()))
    })
    .await;
    ends.extend(settled);
    ends
}

/// Rolls every updated node back to the version it ran before, and waits until it serves it.
pub(super) async fn revert(
    serf: &Serf,
    step: &Step,
    run_id: &str,
    nodes: &[Target],
    opts: &Options,
    out: &Progress,
) -> Vec<String> {
    let app = step.release.app.clone();
    let mut asked = Vec::new();
    for target in nodes {
        let Some(previous) = &target.previous else {
            out.say(&format!(
                "{}: ran no {app} before: left on {}",
                target.node, step.release.version
            ));
            continue;
        };
        let payload = wire::with_run(&format!("{app} {previous}"), run_id);
        let node = std::slice::from_ref(&target.node);
        let answer = gather(
            serf,
            wire::QUERY_ROLLBACK,
            &payload,
            node,
            opts,
            opts.unreachable_after,
            out,
        )
        .await
        .remove(&target.node)
        .and_then(|text| serde_json::from_str::<Ack>(&text).ok());
        match answer {
            Some(ack) if ack.ok => asked.push(target.clone()),
            Some(ack) => out.say(&format!(
                "{}: refused the rollback: {}",
                target.node, ack.msg
            )),
            None => out.say(&format!(
                "{}: UNREACHABLE: no answer to the rollback query",
                target.node
            )),
        }
    }
    let previous: BTreeMap<String, String> = asked
        .iter()
        .filter_map(|t| Some((t.node.clone(), t.previous.clone()?)))
        .collect();
    let names: Vec<String> = asked.iter().map(|t| t.node.clone()).collect();
    let ends = follow(serf, &names, opts, out, |node, state| {
        let a = state.app(&app)?;
        if previous.get(node).is_some_and(|v| a.serves(v)) {
            return Some(Ok(format!(
                "reverted: serves {} {}",
                app,
                a.v.as_deref().unwrap_or("?")
            )));
        }
        let last = state.last.as_ref()?;
        (last.op == "rollback" && last.app == app && last.s == RunState::Failed)
            .then(|| Err(last.m.clone()))
    })
    .await;
    ends.into_iter()
        .filter(|(_, end)| *end == NodeEnd::Serving)
        .map(|(node, _)| node)
        .collect()
}
