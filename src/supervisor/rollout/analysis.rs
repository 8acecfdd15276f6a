//! The canary's judgement: the new version's errors and p99 latency over one step, against the
//! limits of `app.canary` and the stable version's figures over the same period.
//!
//! Pure functions of two windows of the proxy's own counters; the rollout reads the counters at
//! the start of a step and every tick after, and hands the differences here (latency from the
//! canary's warm-up on: its first `min_requests` answers of the step do not count). The rules,
//! for errors and for latency alike:
//!
//! - **Fail** as soon as the canary is *clearly* over a limit: it shows more errors, or more
//!   requests slower than its latency allows, than a release exactly at the limit would show
//!   once in [`DOUBT`] tries (a one-sided binomial test). A handful of slow requests or one 5xx
//!   early in a step is what chance gives; four errors in the first twenty requests at 1 % is not.
//!   Until the canary has the answers a p99 needs, "at the limit" for latency means [`TAIL`]
//!   slow requests rather than 1 %: a p99 of 100 requests is their slowest one, and one burst of a
//!   busy host's stalls is more than that.
//! - **Pass** once the `pause` is over and there is evidence: `min_requests` for the error rate,
//!   and [`P99_EVIDENCE`] answered requests on *each* side for the p99 (so that neither side's
//!   p99 is just its slowest few requests), with both figures within their limits.
//! - Otherwise **wait**: not enough evidence is not a failure. Once `progress_deadline` has
//!   passed too, what is still undecided is settled: too few requests, or an error rate or a
//!   p99 still above its limit, fail; a p99 that never had its evidence is left unjudged and the
//!   step passes on its errors alone, unless `require_p99` is set.
//!
//! Latency allows the canary's p99 the stable p99 times `max_p99_ratio` or plus
//! `min_p99_delta`, whichever is more: a ratio of two small figures is not judged.

use std::time::Duration;

use crate::protocol::canary::{CanarySpec, Share};
use crate::supervisor::proxy::quantile;

mod binomial;

use binomial::clearly_above;
pub use binomial::DOUBT;

/// The quantile the latency is judged on, and the share of requests allowed above it.
const Q: f64 = 0.99;

/// Requests that must lie above a quantile for it to be more than a side's slowest few.
const TAIL: u64 = 10;

/// Answered requests each side needs in a step before its p99 counts: [`TAIL`] of them lie above
/// it then (1 − [`Q`] being 1 %), where with a hundred the p99 is the slowest one or two.
pub const P99_EVIDENCE: u64 = TAIL * 100;

/// One side's traffic over a step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub requests: u64,
    /// 5xx answers, broken exchanges and failed connects.
    pub errors: u64,
    /// The latency histogram's bucket counts (as `BackendStats::latency`) over the step from the
    /// canary's warm-up on (see `canary::Baseline`): empty before.
    pub latency: Vec<u64>,
}

impl Window {
    pub fn error_rate(&self) -> Share {
        Share::ratio(self.errors, self.requests)
    }

    /// Requests with a latency: answered ones (a broken exchange has none).
    pub fn answered(&self) -> u64 {
        self.latency.iter().sum()
    }

    /// p99 latency to the response head, microseconds (0: no answered request).
    pub fn p99_us(&self) -> u64 {
        quantile(&self.latency, Q)
    }

    /// Answered requests that surely took longer than `us`: those in buckets whose every value
    /// is above it (a bucket holds values above the previous bucket's upper bound).
    fn slower_than(&self, us: u64) -> u64 {
        let bounds = upper_bounds(self.latency.len());
        self.latency
            .iter()
            .enumerate()
            .filter(|&(i, _)| i > 0 && bounds[i - 1] >= us)
            .map(|(_, count)| count)
            .sum()
    }

    /// The side's figures, as `status` shows them.
    pub fn figures(&self) -> String {
        let p99 = match self.answered() {
            0 => "no p99 yet".to_owned(),
            _ => format!("p99 {}", millis(self.p99_us())),
        };
        format!(
            "{} errors, {p99}, {} requests",
            self.error_rate(),
            self.requests
        )
    }
}

/// Where a step stands in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Within its `pause`: only a clear failure ends it.
    Pause,
    /// Past its `pause`: it passes as soon as the evidence is there.
    Judged,
    /// Past `pause + progress_deadline`: no more waiting.
    Overdue,
}

impl Stage {
    /// The stage of a step that began `elapsed` ago.
    pub fn of(spec: &CanarySpec, elapsed: Duration) -> Stage {
        if elapsed < spec.pause {
            Stage::Pause
        } else if elapsed < spec.pause + spec.progress_deadline {
            Stage::Judged
        } else {
            Stage::Overdue
        }
    }
}

/// What a step's figures say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet; the text says what the step waits for.
    Wait(String),
    /// As good as the limits ask; the text sums the figures up.
    Pass(String),
    /// Worse than a limit; the text names it, for the log, the status and the failure hooks.
    Fail(String),
}

/// What one criterion (errors or latency) says on its own.
enum Finding {
    Within,
    Undecided(String),
    Over(String),
}

/// Judges the new version's `canary` window against `spec` and the `stable` window of the same
/// period, at `stage` of its step.
pub fn judge(stable: &Window, canary: &Window, spec: &CanarySpec, stage: Stage) -> Verdict {
    let errors = errors(stable, canary, spec);
    if let Finding::Over(why) = errors {
        return Verdict::Fail(why);
    }
    let latency = latency(stable, canary, spec);
    if let Finding::Over(why) = latency {
        return Verdict::Fail(why);
    }
    let deadline = humantime::format_duration(spec.progress_deadline);
    match (stage, errors, latency) {
        (Stage::Pause, Finding::Undecided(why), _) | (Stage::Pause, _, Finding::Undecided(why)) => {
            Verdict::Wait(why)
        }
        (Stage::Pause, _, _) => Verdict::Wait(format!(
            "judged at the end of the pause ({})",
            humantime::format_duration(spec.pause)
        )),
        (Stage::Judged, Finding::Undecided(why), _)
        | (Stage::Judged, _, Finding::Undecided(why)) => Verdict::Wait(why),
        (Stage::Overdue, Finding::Undecided(why), _) => Verdict::Fail(format!(
            "no verdict within progress_deadline {deadline}: {why}"
        )),
        (Stage::Overdue, _, Finding::Undecided(why))
            if spec.require_p99 || p99_evidence(stable, canary) =>
        {
            Verdict::Fail(format!(
                "no verdict within progress_deadline {deadline}: {why}"
            ))
        }
        (Stage::Overdue, _, Finding::Undecided(_)) => Verdict::Pass(format!(
            "{}; p99 not judged: {} canary and {} stable requests answered of the {P99_EVIDENCE} \
             each it needs, within progress_deadline {deadline}",
            error_summary(stable, canary),
            canary.answered(),
            stable.answered()
        )),
        _ => Verdict::Pass(format!(
            "{}, p99 {} (stable {})",
            error_summary(stable, canary),
            millis(canary.p99_us()),
            millis(stable.p99_us())
        )),
    }
}

fn error_summary(stable: &Window, canary: &Window) -> String {
    format!(
        "error rate {} (stable {}) over {} requests",
        canary.error_rate(),
        stable.error_rate(),
        canary.requests
    )
}

/// The error rate against `max_error_rate`: over when clearly so, within once `min_requests`
/// show a rate at most the limit.
fn errors(stable: &Window, canary: &Window, spec: &CanarySpec) -> Finding {
    let limit = spec.max_error_rate;
    let rate = f64::from(limit.ppm()) / 1_000_000.0;
    let figures = format!(
        "error rate {} ({} of {} requests)",
        canary.error_rate(),
        canary.errors,
        canary.requests
    );
    if clearly_above(canary.errors, canary.requests, rate) {
        return Finding::Over(format!(
            "{figures} is clearly above max_error_rate {limit} (stable {})",
            stable.error_rate()
        ));
    }
    if canary.requests < spec.min_requests {
        return Finding::Undecided(format!(
            "{} of the {} requests needed to judge",
            canary.requests, spec.min_requests
        ));
    }
    if canary.error_rate() > limit {
        return Finding::Undecided(format!(
            "{figures} is above max_error_rate {limit} (stable {}), not clearly yet",
            stable.error_rate()
        ));
    }
    Finding::Within
}

/// Whether both sides answered enough requests for their p99s to count.
fn p99_evidence(stable: &Window, canary: &Window) -> bool {
    stable.answered() >= P99_EVIDENCE && canary.answered() >= P99_EVIDENCE
}

/// The canary's p99 against the stable one's: over when clearly more than 1 % of its requests
/// took longer than allowed, within once both sides have their evidence and its p99 is allowed.
fn latency(stable: &Window, canary: &Window, spec: &CanarySpec) -> Finding {
    let floor = spec.min_requests.max(1);
    if canary.answered() < floor || stable.answered() < floor {
        return Finding::Undecided(format!(
            "{} canary and {} stable requests answered of the {floor} each needed to judge the \
             latency",
            canary.answered(),
            stable.answered()
        ));
    }
    let (p99, stable_p99) = (canary.p99_us(), stable.p99_us());
    let delta_us = u64::try_from(spec.min_p99_delta.as_micros()).unwrap_or(u64::MAX);
    let allowed = ((stable_p99 as f64 * spec.max_p99_ratio) as u64).max(stable_p99 + delta_us);
    let compared = || {
        format!(
            "p99 {} is {:.2}x the stable {} (max_p99_ratio {}) and {} above it (min_p99_delta {})",
            millis(p99),
            p99 as f64 / stable_p99.max(1) as f64,
            millis(stable_p99),
            spec.max_p99_ratio,
            millis(p99.saturating_sub(stable_p99)),
            humantime::format_duration(spec.min_p99_delta)
        )
    };
    // Over when clearly more than 1 % took longer; with fewer answers than a p99 needs, more
    // than TAIL of them (10 % of 100): a burst of slow requests on a busy host is not a p99.
    let (slow, answered) = (canary.slower_than(allowed), canary.answered());
    let share = (1.0 - Q).max(TAIL as f64 / answered as f64);
    if clearly_above(slow, answered, share) {
        return Finding::Over(format!(
            "{}: {slow} of {answered} requests took over the {} allowed, clearly more than {} of \
             them",
            compared(),
            millis(allowed),
            if share > 1.0 - Q {
                format!("{TAIL}")
            } else {
                "1%".to_owned()
            }
        ));
    }
    if !p99_evidence(stable, canary) {
        return Finding::Undecided(format!(
            "{} canary and {} stable requests answered of the {P99_EVIDENCE} each a p99 needs",
            canary.answered(),
            stable.answered()
        ));
    }
    if p99 > allowed {
        return Finding::Undecided(format!(
            "{}, over the {} allowed, not clearly yet",
            compared(),
            millis(allowed)
        ));
    }
    Finding::Within
}

/// The upper bound, in µs, of each of the first `len` histogram buckets. The proxy keeps its
/// bucket layout to itself; the quantile of a histogram holding one value in bucket `i` is that
/// bucket's upper bound, which is all that is needed here. Computed once per length.
fn upper_bounds(len: usize) -> std::sync::Arc<[u64]> {
    use std::sync::{Arc, Mutex};
    static CACHE: Mutex<Option<Arc<[u64]>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(bounds) = cache.as_ref().filter(|b| b.len() == len) {
        return bounds.clone();
    }
    let mut one = vec![0; len];
    let bounds: Arc<[u64]> = (0..len)
        .map(|i| {
            one[i] = 1;
            let bound = quantile(&one, 1.0);
            one[i] = 0;
            bound
        })
        .collect();
    *cache = Some(bounds.clone());
    bounds
}

fn millis(us: u64) -> String {
    format!("{:.1}ms", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests;
