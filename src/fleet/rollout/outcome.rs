//! What a rollout reports: the progress lines it prints as it goes, how each node's part ended
//! (`NodeEnd`) and how the whole rollout ended (`Report`).

use std::time::Instant;

/// How one app's rollout ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Nodes that staged the release (before any switch).
    pub staged: Vec<String>,
    pub updated: Vec<String>,
    pub current: Vec<String>,
    pub unreachable: Vec<(String, String)>,
    pub failed: Vec<(String, String)>,
    pub reverted: Vec<String>,
    /// Why the rollout stopped early, if it did.
    pub halted: Option<String>,
}

/// Prints timestamped progress lines relative to the rollout's start: on stdout, or on stderr
/// when stdout carries a document for scripts (`cutover rollout --json`).
pub struct Progress {
    start: Instant,
    on_stderr: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            start: Instant::now(),
            on_stderr: false,
        }
    }
}

impl Progress {
    /// Progress on stderr, leaving stdout to the caller's document.
    pub fn on_stderr() -> Progress {
        Progress {
            on_stderr: true,
            ..Progress::default()
        }
    }

    pub fn say(&self, line: &str) {
        let line = format!("[{:>6.1}s] {line}", self.start.elapsed().as_secs_f64());
        if self.on_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

/// How one node's part of a batch or a revert ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NodeEnd {
    Serving,
    Failed(String),
    Unreachable(String),
    Refused(String),
}
