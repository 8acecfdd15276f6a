//! Benchmark: a 5-node rollout with `--max-parallel 1` (coordination overhead per node beyond the
//! app's own health gating; target ≤ 1 s) and a rejoining node's catch-up (target ≤ 10 s).
//!
//! Run: `cargo bench --bench fleet`. Real Serf agents and supervisors on 127.0.0.1, as in the
//! integration tests; the baseline is the same deploy done directly with `cutover apply`.

#[path = "../it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::fleet::{release, text, Behaviour, Fleet};
use support::wait_until;

const NODES: usize = 5;

fn main() {
    let fleet = Fleet::start(NODES, true, |_| Vec::new());
    let dir = fleet.root.path();
    let rollout = |manifest: &std::path::Path, parallel: usize| {
        let started = Instant::now();
        let out = fleet.rollout(
            "n1",
            &[
                manifest.to_str().unwrap(),
                "--max-parallel",
                &parallel.to_string(),
            ],
        );
        (started.elapsed(), out)
    };
    let (_, out) = rollout(&release(dir, "shop", "1", Behaviour::Serves), NODES);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Baseline: the same blue-green deploy on one node, straight through `cutover apply`.
    let mut direct = Vec::new();
    for v in ["b1", "b2", "b3"] {
        let manifest = release(dir, "shop", v, Behaviour::Serves);
        let started = Instant::now();
        let out = fleet.nodes[NODES - 1].apply(&manifest);
        assert!(out.status.success(), "{}", text(&out));
        direct.push(started.elapsed());
    }
    direct.sort();
    let baseline = direct[1];

    let (took, out) = rollout(&release(dir, "shop", "2", Behaviour::Serves), 1);
    fleet.assert_rolled_out(&out);
    // The rollout's own timestamped progress shows where the time per node goes.
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if std::env::var_os("BENCH_LOGS").is_some() {
        println!("{}", fleet.logs());
    }
    let per_node = took / NODES as u32;
    let overhead = per_node.saturating_sub(baseline);
    println!(
        "fleet: {NODES}-node rollout, --max-parallel 1: {took:.2?} in all, {per_node:.2?} per node"
    );
    println!("fleet: direct `cutover apply` on one node (median of 3): {baseline:.2?}");
    println!(
        "fleet: coordination overhead per node: {overhead:.2?} (target <= 1s): {}",
        verdict(overhead <= Duration::from_secs(1))
    );

    // Catch-up: a node down during a rollout runs the fleet's version soon after it returns.
    let mut fleet = fleet;
    let last = format!("n{NODES}");
    fleet.node_mut(&last).kill();
    fleet.wait_alive(NODES - 1);
    let v3 = release(fleet.root.path(), "shop", "3", Behaviour::Serves);
    let out = fleet.rollout("n1", &[v3.to_str().unwrap(), "--max-parallel", "2"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let join = fleet.node("n1").agent().bind.clone();
    let back = Instant::now();
    fleet.node_mut(&last).rejoin(join);
    let node = fleet.node(&last);
    wait_until(
        "the rejoining node to run shop 3",
        Duration::from_secs(120),
        || node.live_version("shop").as_deref() == Some("3"),
    );
    let rejoin = back.elapsed();
    if std::env::var_os("BENCH_LOGS").is_some() {
        println!("{}", fleet.node(&last).fleet_log());
    }
    println!(
        "fleet: rejoining node runs the fleet's version after {rejoin:.2?} (target <= 10s): {}",
        verdict(rejoin <= Duration::from_secs(10))
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}
