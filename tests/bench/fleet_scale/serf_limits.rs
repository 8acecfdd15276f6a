//! Serf's own limits, read from the `serf` on this machine rather than from its documentation:
//! its version, the largest query payload it sends, how many `-node` filters fit in one query
//! (cutover names every node it asks), how long a query waits by default, and how fast a tag
//! change reaches every member.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::support::serf::{AgentConfig, SerfAgent};

/// A tag no member carries: queries filtered on it reach no handler and simply run out.
const NOBODY: &str = "role=^cutover-bench-nobody$";

/// What the lone probe agent showed.
pub struct Limits {
    pub version: String,
    /// The largest query payload Serf sends (bytes), with no filter.
    pub max_payload: usize,
    /// How many `-node NAME` filters fit in one query, for names like the bench's (`n123`).
    pub max_short_names: usize,
    /// The same for 24-character host names (`web-0001.dc1.example.com`).
    pub max_host_names: usize,
    /// A query's default timeout on a cluster of one.
    pub default_timeout_alone: Duration,
}

/// Starts a Serf agent of its own (no cluster, no handler; `-profile=local` as the fleet's) in
/// `dir`, measures what `Limits` lists, and stops it.
pub fn probe(dir: &Path) -> Limits {
    let agent = SerfAgent::start(&AgentConfig {
        name: "probe".into(),
        log: dir.join("probe-serf.log"),
        ..AgentConfig::default()
    });
    let version = std::process::Command::new("serf")
        .arg("version")
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    let max_payload = largest(4096, |len| dispatched(&agent, &[], &"x".repeat(len)));
    let max_short_names = largest(4096, |count| named(&agent, count, |i| format!("n{i}")));
    let max_host_names = largest(4096, |count| {
        named(&agent, count, |i| format!("web-{i:04}.dc1.example.com"))
    });
    Limits {
        version,
        max_payload,
        max_short_names,
        max_host_names,
        default_timeout_alone: default_timeout(&agent),
    }
}

/// How long a query without `-timeout` stays open on `agent`'s cluster (Serf derives it from
/// the cluster's size); filtered so that no member's handler runs.
pub fn default_timeout(agent: &SerfAgent) -> Duration {
    let started = Instant::now();
    let out = agent.cli(&[
        "query",
        "-no-ack",
        "-tag",
        NOBODY,
        "cutover-bench-probe",
        "",
    ]);
    let took = started.elapsed();
    assert!(out.status.success(), "serf query: {}", said(&out));
    took
}

/// Time until every agent in `agents` sees a new value of tag `cutover-bench` on `on`, with
/// the period of one sweep over all of them (each time is late by at most one sweep).
pub fn tag_spread(on: &SerfAgent, agents: &[&SerfAgent], value: &str) -> (Duration, Duration) {
    let tag = format!("cutover-bench={value}");
    let started = Instant::now();
    let out = on.cli(&["tags", "-set", &tag]);
    assert!(out.status.success(), "serf tags: {}", said(&out));
    let mut waiting: Vec<&SerfAgent> = agents.to_vec();
    let mut sweeps = 0u32;
    let deadline = started + Duration::from_secs(60);
    while !waiting.is_empty() {
        assert!(
            Instant::now() < deadline,
            "tag {tag} not seen by {} agents after 60s",
            waiting.len()
        );
        waiting.retain(|agent| on.tags_seen_by(agent)["cutover-bench"] != value);
        sweeps += 1;
    }
    let took = started.elapsed();
    (took, took / sweeps)
}

/// Whether `serf query` sends a query with these filters and payload; panics on any failure
/// other than Serf's size limit.
fn dispatched(agent: &SerfAgent, filters: &[&str], payload: &str) -> bool {
    let mut args = vec!["query", "-no-ack", "-timeout=10ms"];
    args.extend_from_slice(filters);
    args.extend_from_slice(&["cutover-bench-probe", payload]);
    let out = agent.cli(&args);
    if out.status.success() {
        return true;
    }
    let why = said(&out);
    assert!(why.contains("exceeds limit"), "serf query: {why}");
    false
}

/// Whether a query naming `count` nodes (`name(1)`…) is sent.
fn named(agent: &SerfAgent, count: usize, name: fn(usize) -> String) -> bool {
    let filters: Vec<String> = (1..=count).map(|i| format!("-node={}", name(i))).collect();
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    dispatched(agent, &filters, "")
}

/// The largest `n` in `0..=top` for which `fits(n)` holds, `fits` being true up to some point
/// and false after it.
fn largest(top: usize, fits: impl Fn(usize) -> bool) -> usize {
    let (mut yes, mut no) = (0, top + 1);
    while no - yes > 1 {
        let mid = (yes + no) / 2;
        if fits(mid) {
            yes = mid;
        } else {
            no = mid;
        }
    }
    yes
}

/// What `serf` said: its errors go to stdout or stderr depending on the verb.
fn said(out: &Output) -> String {
    let both = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
    String::from_utf8_lossy(&both).trim().to_owned()
}
