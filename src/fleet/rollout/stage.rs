//! The staging phase that comes before any switch: every target node downloads, verifies and
//! unpacks the release (`cutover-stage`, run as `cutover apply --stage-only`), and the rollout
//! goes on to switch only when few enough nodes failed (`--max-failures`) and enough hold the
//! release (`--min-staged`).

use super::ask::{follow, start_work};
use super::batches::Target;
use super::inputs::{Options, Step};
use super::outcome::{NodeEnd, Progress, Report};
use crate::fleet::serf::Serf;
use crate::fleet::wire::{self, RunState};

/// Asks every target to stage the release and follows each one until it has staged, failed or
/// gone silent; the outcome goes into `report` (`staged`, `failed`, `unreachable`).
pub(super) async fn stage_all(
    serf: &Serf,
    step: &Step,
    run_id: &str,
    targets: &[Target],
    opts: &Options,
    out: &Progress,
    report: &mut Report,
) {
    let r = &step.release;
    let nodes: Vec<String> = targets.iter().map(|t| t.node.clone()).collect();
    if nodes.is_empty() {
        return;
    }
    out.say(&format!(
        "staging {} {} on {} node(s): {}",
        r.app,
        r.version,
        nodes.len(),
        nodes.join(", ")
    ));
    let payload = wire::with_run(&step.url, run_id);
    let (pending, mut ends) = start_work(
        serf,
        wire::QUERY_STAGE,
        "stage",
        &payload,
        &nodes,
        opts,
        out,
    )
    .await;
    let (app, version) = (r.app.clone(), r.version.clone());
    let settled = follow(serf, &pending, opts, out, move |_, state| {
        // The handler put this run on record ("running") when it accepted it, so a stage that
        // ended on record is ours; an unnamed one failed before the node could read the manifest.
        let last = state.last.as_ref()?;
        let ours =
            last.op == "stage" && (last.app.is_empty() || (last.app == app && last.v == version));
        match last.s {
            RunState::Ok if ours => Some(Ok(format!("staged {app} {version}"))),
            RunState::Failed if ours => Some(Err(format!("could not stage: {}", last.m))),
            _ => None,
        }
    })
    .await;
    ends.extend(settled);
    for node in nodes {
        match ends.remove(&node) {
            Some(NodeEnd::Serving) => report.staged.push(node),
            Some(NodeEnd::Failed(why)) | Some(NodeEnd::Refused(why)) => {
                report.failed.push((node, why));
            }
            Some(NodeEnd::Unreachable(why)) => report.unreachable.push((node, why)),
            None => {}
        }
    }
    out.say(&format!(
        "staged {} {} on {} of {} node(s)",
        r.app,
        r.version,
        report.staged.len(),
        targets.len()
    ));
}

/// Why the rollout must stop before its first switch, if it must: too many nodes could not
/// stage, or too few hold the release. Nothing has been switched at this point.
pub(super) fn halt_before_switch(report: &Report, opts: &Options) -> Option<String> {
    if report.failed.len() > opts.max_failures {
        let names: Vec<&str> = report.failed.iter().map(|(n, _)| n.as_str()).collect();
        return Some(format!(
            "{} node(s) could not stage ({}), more than --max-failures {}: nothing switched",
            report.failed.len(),
            names.join(", "),
            opts.max_failures
        ));
    }
    let holding = report.staged.len() + report.current.len();
    (holding < opts.min_staged).then(|| {
        format!(
            "{holding} node(s) hold the release (staged or already serving it), fewer than \
             --min-staged {}: nothing switched",
            opts.min_staged
        )
    })
}

/// The plan's batches cut down to the nodes that staged, empty batches dropped.
pub(super) fn staged_batches(batches: Vec<Vec<Target>>, report: &Report) -> Vec<Vec<Target>> {
    let staged = |t: &Target| report.staged.contains(&t.node);
    batches
        .into_iter()
        .map(|batch| batch.into_iter().filter(staged).collect::<Vec<_>>())
        .filter(|batch| !batch.is_empty())
        .collect()
}

/// The planned nodes by name, for the staging phase.
pub(super) fn targets(batches: &[Vec<Target>]) -> Vec<Target> {
    batches.iter().flatten().cloned().collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn opts(max_failures: usize, min_staged: usize) -> Options {
        Options {
            tags: Vec::new(),
            max_parallel: 1,
            min_healthy: 0,
            max_failures,
            min_staged,
            stage_only: false,
            node_timeout: Duration::from_secs(60),
            unreachable_after: Duration::from_secs(10),
            query_timeout: Duration::from_secs(2),
            poll: Duration::from_millis(200),
        }
    }

    fn report(staged: &[&str], failed: &[&str], current: &[&str]) -> Report {
        let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        Report {
            staged: names(staged),
            failed: failed.iter().map(|n| (n.to_string(), "x".into())).collect(),
            current: names(current),
            ..Report::default()
        }
    }

    fn target(node: &str) -> Target {
        Target {
            node: node.to_owned(),
            previous: Some("1".to_owned()),
            serving: true,
        }
    }

    #[test]
    fn a_stage_failure_past_max_failures_halts_before_any_switch() {
        let halt = halt_before_switch(&report(&["n1", "n3"], &["n2"], &[]), &opts(0, 0));
        let why = halt.expect("halted");
        assert!(
            why.contains("(n2)") && why.contains("nothing switched"),
            "{why}"
        );
        assert!(halt_before_switch(&report(&["n1", "n3"], &["n2"], &[]), &opts(1, 0)).is_none());
    }

    #[test]
    fn min_staged_counts_staged_and_already_current_nodes() {
        assert!(halt_before_switch(&report(&["n1"], &[], &["n2"]), &opts(0, 2)).is_none());
        let why = halt_before_switch(&report(&["n1"], &["n3"], &[]), &opts(1, 2)).unwrap();
        assert!(why.contains("--min-staged 2"), "{why}");
    }

    #[test]
    fn only_staged_nodes_are_switched_and_empty_batches_go() {
        let batches = vec![
            vec![target("n1"), target("n2")],
            vec![target("n3")],
            vec![target("n4")],
        ];
        let kept = staged_batches(batches, &report(&["n1", "n4"], &["n2", "n3"], &[]));
        let names: Vec<Vec<&str>> = kept
            .iter()
            .map(|b| b.iter().map(|t| t.node.as_str()).collect())
            .collect();
        assert_eq!(names, [vec!["n1"], vec!["n4"]]);
    }
}
