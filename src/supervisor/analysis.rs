//! The canary's judgement: the new version's error rate and p99 latency over one step, against
//! the limits of `app.canary` and the stable version's figures over the same step.
//!
//! Pure functions of two windows of the proxy's own counters; the rollout reads the counters at
//! the start and at the end of a step and hands the differences here.

use crate::protocol::canary::{CanarySpec, Share};

/// One side's traffic over a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub requests: u64,
    /// 5xx answers, broken exchanges and failed connects.
    pub errors: u64,
    /// p99 latency to the response head, microseconds (0: no request).
    pub p99_us: u64,
}

impl Window {
    pub fn error_rate(&self) -> Share {
        Share::ratio(self.errors, self.requests)
    }
}

/// What a step's figures say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough traffic yet to judge; the text says how much.
    Wait(String),
    /// As good as the limits ask; the text sums the figures up.
    Pass(String),
    /// Worse than a limit; the text names it, for the log, the status and the failure hooks.
    Fail(String),
}

/// Judges the new version's `canary` window against `spec` and the `stable` window.
///
/// Errors are judged as soon as they are certain: once the canary has more errors than the
/// limit allows of `min_requests`, more traffic cannot make the step pass, so a bad release is
/// stopped without waiting for the minimum.
pub fn judge(stable: &Window, canary: &Window, spec: &CanarySpec) -> Verdict {
    let limit = spec.max_error_rate;
    let allowed = u64::from(limit.ppm()) * canary.requests.max(spec.min_requests) / 1_000_000;
    if canary.errors > allowed && canary.errors > 0 {
        return Verdict::Fail(format!(
            "error rate {} over {} requests is above max_error_rate {limit} (stable: {})",
            canary.error_rate(),
            canary.requests,
            stable.error_rate()
        ));
    }
    if canary.requests < spec.min_requests {
        return Verdict::Wait(format!(
            "{} of the {} requests needed to judge",
            canary.requests, spec.min_requests
        ));
    }
    // Latency is compared only when the stable side has enough traffic to have a p99 at all.
    if stable.requests >= spec.min_requests && stable.p99_us > 0 {
        let ratio = canary.p99_us as f64 / stable.p99_us as f64;
        if ratio > spec.max_p99_ratio {
            return Verdict::Fail(format!(
                "p99 {} is {ratio:.2}x the stable {} (max_p99_ratio {})",
                millis(canary.p99_us),
                millis(stable.p99_us),
                spec.max_p99_ratio
            ));
        }
    }
    Verdict::Pass(format!(
        "error rate {} (stable {}), p99 {} (stable {}) over {} requests",
        canary.error_rate(),
        stable.error_rate(),
        millis(canary.p99_us),
        millis(stable.p99_us),
        canary.requests
    ))
}

fn millis(us: u64) -> String {
    format!("{:.1}ms", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(requests: u64, errors: u64, p99_ms: u64) -> Window {
        Window {
            requests,
            errors,
            p99_us: p99_ms * 1000,
        }
    }

    #[test]
    fn too_little_traffic_waits() {
        let spec = CanarySpec::default();
        let verdict = judge(&window(5000, 0, 10), &window(40, 0, 10), &spec);
        assert!(matches!(verdict, Verdict::Wait(ref m) if m.contains("40 of the 100")));
    }

    #[test]
    fn five_percent_errors_fail_a_one_percent_limit() {
        let spec = CanarySpec::default();
        let verdict = judge(&window(10_000, 3, 10), &window(200, 10, 10), &spec);
        let Verdict::Fail(why) = verdict else {
            panic!("{verdict:?}")
        };
        assert!(why.contains("error rate 5%"), "{why}");
        assert!(why.contains("max_error_rate 1%"), "{why}");
    }

    #[test]
    fn certain_failure_does_not_wait_for_the_minimum() {
        // 1% of 100 is 1 error; 2 errors in 20 requests cannot end below the limit.
        let spec = CanarySpec::default();
        assert!(matches!(
            judge(&window(1000, 0, 10), &window(20, 2, 10), &spec),
            Verdict::Fail(_)
        ));
        // One error in 20 still can.
        assert!(matches!(
            judge(&window(1000, 0, 10), &window(20, 1, 10), &spec),
            Verdict::Wait(_)
        ));
    }

    #[test]
    fn a_slow_canary_fails_and_a_good_one_passes() {
        let spec = CanarySpec::default();
        let slow = judge(&window(10_000, 0, 10), &window(500, 0, 20), &spec);
        assert!(
            matches!(slow, Verdict::Fail(ref m) if m.contains("2.00x")),
            "{slow:?}"
        );
        let good = judge(&window(10_000, 50, 10), &window(500, 2, 12), &spec);
        assert!(matches!(good, Verdict::Pass(_)), "{good:?}");
    }
}
