//! A canary's trace: its step and share, and the judge's figures of both sides at each reading,
//! for `status` and the dashboard's chart.
//!
//! Recorded by the canary steps where they already read the proxy's counters (no timer of its
//! own), and bounded: once [`CANARY_SAMPLES`] readings are kept, every other one is dropped and
//! readings are taken half as often from then on, so a canary of hours keeps its whole run in a
//! few tens of kilobytes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::protocol::canary::Share;
use crate::protocol::{CanarySample, CanaryStatus, SideFigures, CANARY_SAMPLES};

use super::analysis::Window;

/// The trace of one rollout's canary; empty for a rollout that runs none.
#[derive(Debug, Clone, Default)]
pub struct CanaryTrace {
    status: Option<CanaryStatus>,
    /// Readings closer together than this are not kept.
    every: Duration,
    last: Option<Instant>,
}

impl CanaryTrace {
    /// The trace as `status` shows it: `None` before the canary's first step.
    pub fn status(&self) -> Option<CanaryStatus> {
        self.status.clone()
    }

    /// A step begins: `step` (from 1) of `steps` at `share`.
    pub fn step(&mut self, version: &str, step: u32, steps: u32, share: Share) {
        let status = self.status.get_or_insert_with(|| CanaryStatus {
            version: version.to_owned(),
            running: true,
            step,
            steps,
            share,
            samples: Vec::new(),
        });
        status.step = step;
        status.share = share;
    }

    /// One reading of both sides over the step so far, kept unless the last kept one is more
    /// recent than the current spacing.
    pub fn record(&mut self, now: Instant, stable: &Window, canary: &Window) {
        let Some(status) = &mut self.status else {
            return;
        };
        if self.last.is_some_and(|last| now < last + self.every) {
            return;
        }
        self.last = Some(now);
        if status.samples.len() >= CANARY_SAMPLES {
            let mut i = 0;
            status.samples.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.every = (self.every * 2).max(Duration::from_millis(500));
        }
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        status.samples.push(CanarySample {
            at_ms,
            step: status.step,
            share: status.share,
            stable: figures(stable),
            canary: figures(canary),
        });
    }
}

fn figures(window: &Window) -> SideFigures {
    SideFigures {
        requests: window.requests,
        errors: window.errors,
        error_rate: window.error_rate(),
        p99_us: (window.answered() > 0).then(|| window.p99_us()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(requests: u64, errors: u64) -> Window {
        Window {
            requests,
            errors,
            latency: Vec::new(),
        }
    }

    #[test]
    fn nothing_is_recorded_before_the_first_step() {
        let mut trace = CanaryTrace::default();
        trace.record(Instant::now(), &window(10, 0), &window(1, 0));
        assert_eq!(trace.status(), None);
    }

    #[test]
    fn readings_carry_their_step_and_both_sides() {
        let mut trace = CanaryTrace::default();
        let ten: Share = "10%".parse().unwrap();
        trace.step("v2", 1, 2, ten);
        trace.record(Instant::now(), &window(900, 9), &window(100, 5));
        let status = trace.status().unwrap();
        assert_eq!((status.step, status.steps, status.share), (1, 2, ten));
        let sample = &status.samples[0];
        assert_eq!((sample.step, sample.share), (1, ten));
        assert_eq!(sample.canary.error_rate, "5%".parse().unwrap());
        assert_eq!(sample.stable.error_rate, "1%".parse().unwrap());
        // No answered request in the latency window yet: no p99, rather than a p99 of 0.
        assert_eq!(sample.canary.p99_us, None);
    }

    #[test]
    fn a_long_canary_is_thinned_out_and_keeps_its_whole_run() {
        let mut trace = CanaryTrace::default();
        trace.step("v2", 1, 1, Share::WHOLE);
        let start = Instant::now();
        let readings = CANARY_SAMPLES * 5;
        for i in 0..readings {
            let at = start + Duration::from_millis(250 * i as u64);
            trace.record(at, &window(i as u64, 0), &window(i as u64, 0));
        }
        let samples = trace.status().unwrap().samples;
        assert!(samples.len() <= CANARY_SAMPLES, "{}", samples.len());
        assert!(samples.len() >= CANARY_SAMPLES / 2, "{}", samples.len());
        assert_eq!(samples[0].stable.requests, 0, "the first reading stays");
        let last = samples.last().unwrap().stable.requests;
        assert!(
            last + 10 >= readings as u64,
            "the latest readings are kept: {last}"
        );
    }
}
