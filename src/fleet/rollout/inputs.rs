//! What a rollout is asked to do: the app to roll out (`Step`) and how it paces itself
//! (`Options`); read by the planning, the run and the queries alike.

use std::time::Duration;

use crate::fleet::manifest::Release;

/// How a rollout paces itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// Member tag filters, `key=regexp`.
    pub tags: Vec<String>,
    pub max_parallel: usize,
    /// Nodes that must keep serving the app while a batch is out.
    pub min_healthy: usize,
    /// Failed nodes tolerated before the rollout halts and reverts (staging failures count).
    pub max_failures: usize,
    /// Nodes that must hold the release (staged, or already serving it) before the first switch.
    pub min_staged: usize,
    /// Stage on every target and stop before switching any.
    pub stage_only: bool,
    /// How long one node may take to serve the new version.
    pub node_timeout: Duration,
    /// How long a node may go without answering before it is given up as unreachable.
    pub unreachable_after: Duration,
    /// Timeout of each Serf query.
    pub query_timeout: Duration,
    /// Pause between two status polls of a batch.
    pub poll: Duration,
}

/// One app to roll out: its manifest URL and what the manifest deploys.
#[derive(Debug, Clone)]
pub struct Step {
    pub url: String,
    pub release: Release,
    /// Tag filters for this app; empty: `Options::tags`.
    pub tags: Vec<String>,
}
