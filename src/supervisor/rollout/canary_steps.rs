//! The canary steps of a rollout: give the healthy candidates a growing share of the traffic,
//! judge each step from the proxy's own counters, and end with a verdict — promote (the caller
//! then switches all traffic as blue-green does) or back out.
//!
//! A straight line like the rest of the rollout: for each step, set the share, read the counters,
//! wait out the pause while watching them, judge. The operator can end it at any time with
//! `cutover promote` or `cutover abort`; `progress_deadline` bounds every wait.

use std::time::Duration;

use tokio::time::Instant;

use crate::supervisor::events::Counted;
use crate::supervisor::proxy::BackendStats;

use super::analysis::{self, Stage, Verdict, Window};
use super::contract::{CanaryDecision, Rollout};

/// How often a step's figures are read and judged.
const TICK: Duration = Duration::from_millis(250);

/// Runs the steps; `Ok` means promote, `Err` why the canary was backed out.
pub async fn run(rollout: &Rollout) -> Result<(), String> {
    let spec = &rollout.spec.canary;
    let total = spec.steps.len();
    for (i, share) in spec.steps.iter().copied().enumerate() {
        let step = format!("canary step {}/{total} at {share}", i + 1);
        rollout.link.canary(Some(share)).await?;
        rollout
            .canary
            .send_modify(|trace| trace.step(&rollout.version, i as u32 + 1, total as u32, share));
        rollout
            .say(format!(
                "{step}: {share} of new clients go to {} for {}",
                rollout.version,
                humantime::format_duration(spec.pause)
            ))
            .await;
        let judged = judge_step(rollout, &step).await;
        let verdict = match &judged {
            Ok(None) => "pass",
            Ok(Some(CanaryDecision::Promote)) => "promoted",
            Ok(Some(CanaryDecision::Abort)) => "aborted",
            Err(_) => "fail",
        };
        rollout
            .app
            .events
            .count(Counted::CanaryStep, &rollout.app.name, verdict);
        match judged? {
            Some(CanaryDecision::Promote) => {
                rollout.say("promoted by the operator".to_owned()).await;
                return Ok(());
            }
            Some(CanaryDecision::Abort) => return Err("aborted by the operator".to_owned()),
            None => {}
        }
    }
    if !spec.auto_promote {
        let wait = spec.progress_deadline;
        rollout
            .say(format!(
                "every step passed; waiting for `cutover promote {}` (or abort), up to {}",
                rollout.app.name,
                humantime::format_duration(wait)
            ))
            .await;
        return match rollout.decision_within(wait).await {
            Some(CanaryDecision::Promote) => Ok(()),
            Some(CanaryDecision::Abort) => Err("aborted by the operator".to_owned()),
            None => Err(format!(
                "no promote within progress_deadline {}",
                humantime::format_duration(wait)
            )),
        };
    }
    Ok(())
}

/// Watches one step until it passes (after its pause), fails, or the operator decides.
async fn judge_step(rollout: &Rollout, step: &str) -> Result<Option<CanaryDecision>, String> {
    let spec = &rollout.spec.canary;
    let mut baseline = Baseline::new(rollout.app.proxy.stats());
    let started = Instant::now();
    loop {
        if let Some(decision) = rollout.decision_within(TICK).await {
            return Ok(Some(decision));
        }
        let now = rollout.app.proxy.stats();
        let (stable, canary) = baseline.windows(&now, &rollout.version, spec.min_requests);
        let read_at = Instant::now();
        rollout
            .canary
            .send_modify(|trace| trace.record(read_at, &stable, &canary));
        let stage = Stage::of(spec, started.elapsed());
        match analysis::judge(&stable, &canary, spec, stage) {
            Verdict::Fail(why) => return Err(format!("{step}: {why}")),
            Verdict::Pass(summary) => {
                rollout.say(format!("{step} passed: {summary}")).await;
                return Ok(None);
            }
            Verdict::Wait(why) => rollout.show(format!(
                "{step}: canary {}; stable {}; waiting: {why}",
                canary.figures(),
                stable.figures()
            )),
        }
    }
}

/// The readings a step's windows start from, the same for both sides: the step's start for
/// requests and errors; for latency, the first reading at which the canary had answered
/// `min_requests` in the step. A new instance's first requests are slow for reasons of their
/// own (connections, caches, a JIT, pages of its binary read in on a busy host): they say
/// nothing of its latency once warm, and one burst of them was enough to fail a step.
struct Baseline {
    start: Vec<BackendStats>,
    warm: Option<Vec<BackendStats>>,
}

impl Baseline {
    fn new(start: Vec<BackendStats>) -> Baseline {
        Baseline { start, warm: None }
    }

    /// The stable and the canary side's windows up to the reading `now`.
    fn windows(&mut self, now: &[BackendStats], canary: &str, warm_up: u64) -> (Window, Window) {
        let (mut stable_side, mut canary_side) = windows(&self.start, now, canary);
        if self.warm.is_none() && canary_side.answered() >= warm_up {
            self.warm = Some(now.to_vec());
        }
        let (stable_latency, canary_latency) = match &self.warm {
            Some(warm) => windows(warm, now, canary),
            None => Default::default(),
        };
        stable_side.latency = stable_latency.latency;
        canary_side.latency = canary_latency.latency;
        (stable_side, canary_side)
    }
}

/// The stable and the canary side's traffic between two readings of the proxy's counters, so
/// both over the same period. An instance absent from the first reading counts from zero: all
/// its traffic came after it.
pub fn windows(before: &[BackendStats], after: &[BackendStats], canary: &str) -> (Window, Window) {
    let mut sides = [Window::default(), Window::default()];
    for now in after {
        let then = earlier_reading(before, now);
        let side = &mut sides[usize::from(now.version == canary)];
        let (req, err, fail) =
            then.map_or((0, 0, 0), |t| (t.requests, t.errors_5xx, t.failed_connects));
        side.requests +=
            now.requests.saturating_sub(req) + now.failed_connects.saturating_sub(fail);
        side.errors +=
            now.errors_5xx.saturating_sub(err) + now.failed_connects.saturating_sub(fail);
        side.latency
            .resize(side.latency.len().max(now.latency.len()), 0);
        for (i, count) in now.latency.iter().enumerate() {
            let was = then.and_then(|t| t.latency.get(i)).copied().unwrap_or(0);
            side.latency[i] += count.saturating_sub(was);
        }
    }
    let [stable, canary] = sides;
    (stable, canary)
}

/// The first reading of the instance `now` is a later reading of. The proxy may keep two sets of
/// counters under one id for a while (an instance routed again after a drain cut it starts
/// afresh while the old one finishes): counters only grow, so the earlier reading is the one
/// of that id with the most requests among those with no more than `now` has; none such, it
/// is a new set.
fn earlier_reading<'a>(before: &'a [BackendStats], now: &BackendStats) -> Option<&'a BackendStats> {
    before
        .iter()
        .filter(|then| {
            then.id == now.id
                && then.requests <= now.requests
                && then.errors_5xx <= now.errors_5xx
                && then.failed_connects <= now.failed_connects
        })
        .max_by_key(|then| then.requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(id: &str, version: &str, requests: u64, errors: u64, fast: u64) -> BackendStats {
        let mut latency = vec![0; 64];
        latency[20] = fast;
        BackendStats {
            id: id.to_owned(),
            version: version.to_owned(),
            requests,
            errors_5xx: errors,
            latency,
            ..BackendStats::default()
        }
    }

    #[test]
    fn windows_are_differences_per_side() {
        let before = [stats("v1-0", "v1", 1000, 5, 1000)];
        let after = [
            stats("v1-0", "v1", 1900, 6, 1900),
            stats("v2-0", "v2", 100, 5, 100),
        ];
        let (stable, canary) = windows(&before, &after, "v2");
        assert_eq!((stable.requests, stable.errors), (900, 1));
        assert_eq!((canary.requests, canary.errors), (100, 5));
        assert_eq!((stable.answered(), canary.answered()), (900, 100));
        assert!(stable.p99_us() > 0 && canary.p99_us() == stable.p99_us());
    }

    #[test]
    fn an_instance_that_appears_or_starts_afresh_mid_step_counts_from_zero() {
        let before = [
            stats("v1-0", "v1", 1000, 5, 1000),
            stats("v2-0", "v2", 100, 0, 100),
        ];
        let after = [
            // Still finishing on its old counters, while the same id starts afresh.
            stats("v1-0", "v1", 1010, 5, 1010),
            stats("v1-0", "v1", 300, 1, 300),
            stats("v2-0", "v2", 150, 0, 150),
            // Started during the step (a replacement after a crash).
            stats("v2-1", "v2", 40, 2, 40),
        ];
        let (stable, canary) = windows(&before, &after, "v2");
        assert_eq!((stable.requests, stable.errors), (310, 1));
        assert_eq!(stable.answered(), 310);
        assert_eq!((canary.requests, canary.errors), (90, 2));
        assert_eq!(canary.answered(), 90);
    }

    #[test]
    fn latency_counts_from_the_canarys_warm_up_on_errors_from_the_start() {
        let mut baseline = Baseline::new(vec![
            stats("v1-0", "v1", 1000, 0, 1000),
            stats("v2-0", "v2", 0, 0, 0),
        ]);
        // 60 answers: still warming up, no latency window yet.
        let (stable, canary) = baseline.windows(
            &[
                stats("v1-0", "v1", 1500, 0, 1500),
                stats("v2-0", "v2", 60, 3, 60),
            ],
            "v2",
            100,
        );
        assert_eq!(
            (canary.requests, canary.errors, canary.answered()),
            (60, 3, 0)
        );
        assert_eq!((stable.requests, stable.answered()), (500, 0));
        // Warm at 120: the latency windows of both sides start at this reading.
        baseline.windows(
            &[
                stats("v1-0", "v1", 2000, 0, 2000),
                stats("v2-0", "v2", 120, 3, 120),
            ],
            "v2",
            100,
        );
        let (stable, canary) = baseline.windows(
            &[
                stats("v1-0", "v1", 2700, 0, 2700),
                stats("v2-0", "v2", 200, 3, 200),
            ],
            "v2",
            100,
        );
        assert_eq!(
            (canary.requests, canary.errors, canary.answered()),
            (200, 3, 80)
        );
        assert_eq!((stable.requests, stable.answered()), (1700, 700));
    }
}
