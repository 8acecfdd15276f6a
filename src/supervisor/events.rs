//! What the supervisor counts as it happens, for the admin address's metrics: rollouts by kind
//! and outcome, canary steps by verdict, hand-overs. Everything else the metrics show is read
//! from where it already lives (the proxies' counters, the instances' views) when scraped.
//!
//! Events are rare (a deploy, a step), so one mutex over a small map is all it takes; nothing on
//! a request's path touches this.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// What is counted, each with its own metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counted {
    /// A deploy ended; labelled by outcome (`succeeded`, `failed`).
    Deploy,
    /// A rollback the operator asked for ended; by outcome.
    OperatorRollback,
    /// A rollback the supervisor started (the live release crash-looped) ended; by outcome.
    AutomaticRollback,
    /// A canary step ended; by verdict (`pass`, `fail`, `promoted`, `aborted`).
    CanaryStep,
}

/// The supervisor's event counters; one per supervisor process, shared by every app.
#[derive(Debug, Default)]
pub struct Events {
    counts: Mutex<BTreeMap<(Counted, String, &'static str), u64>>,
    /// Hand-overs behind this supervisor, its predecessors' included.
    handovers: u64,
}

impl Events {
    /// Counters from zero, after `handovers` hand-overs (0 for a supervisor started afresh).
    pub fn new(handovers: u64) -> Events {
        Events {
            counts: Mutex::default(),
            handovers,
        }
    }

    /// Counts one `what` of `app`, labelled `label` (an outcome or a verdict).
    pub fn count(&self, what: Counted, app: &str, label: &'static str) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *counts.entry((what, app.to_owned(), label)).or_default() += 1;
    }

    /// Every count so far, ordered by what, app and label.
    pub fn counts(&self) -> Vec<(Counted, String, &'static str, u64)> {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts
            .iter()
            .map(|((what, app, label), n)| (*what, app.clone(), *label, *n))
            .collect()
    }

    pub fn handovers(&self) -> u64 {
        self.handovers
    }
}
