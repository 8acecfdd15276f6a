//! Staged rollouts on real nodes (Serf agent + supervisor each): every node downloads, verifies
//! and unpacks before any switches, a node that cannot stage halts the rollout with nothing
//! switched, `--min-staged`, `--stage-only` and `status --fleet`, the switch reusing the staged
//! tree (the archive's HTTP origin counts one download per node), and a node that joins
//! mid-rollout staging before it switches.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::support::fleet::{release, served_release, text, Behaviour, Fleet};
use crate::support::http_server::HttpServer;
use crate::support::{cutover, wait_until};

/// A whole rollout in these tests: health gating plus generous coordination on a loaded box.
const ROLLOUT: Duration = Duration::from_secs(120);

/// Starts `n` nodes and puts shop 1 on all of them at once.
fn fleet_on_v1(n: usize, env: impl Fn(usize) -> Vec<(String, String)>) -> Fleet {
    let fleet = Fleet::start(n, true, env);
    let v1 = release(fleet.root.path(), "shop", "1", Behaviour::Serves);
    let out = fleet.rollout(
        "n1",
        &[v1.to_str().unwrap(), "--max-parallel", &n.to_string()],
    );
    fleet.assert_rolled_out(&out);
    fleet
}

fn live(fleet: &Fleet, node: &str) -> Option<String> {
    fleet.node(node).live_version("shop")
}

/// Index of the first line of `stdout` containing `needle`.
fn line_of(stdout: &str, needle: &str) -> usize {
    stdout
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{stdout}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// n2 alone fetches release 2 from a file that is not the archive: its checksum cannot match.
fn corrupt_release_2_on_n2(bad: &Path) -> impl Fn(usize) -> Vec<(String, String)> {
    let corrupt = bad.join("corrupt.tar.gz");
    std::fs::write(&corrupt, b"not the release archive").unwrap();
    let src = format!("file://{}", corrupt.display());
    move |i| {
        if i == 2 {
            vec![("SHOP_SRC_2".to_owned(), src.clone())]
        } else {
            Vec::new()
        }
    }
}

#[test]
fn every_node_stages_before_any_switches_and_the_switch_downloads_nothing() {
    let origin = HttpServer::start();
    let fleet = fleet_on_v1(3, |_| Vec::new());
    let (v2, archive) = served_release(fleet.root.path(), "shop", "2", &origin);
    let downloads = || {
        origin
            .request_heads()
            .iter()
            .filter(|head| head.starts_with(&format!("GET {archive} ")))
            .count()
    };

    let out = fleet.rollout("n2", &[v2.to_str().unwrap(), "--max-parallel", "1"]);
    fleet.assert_rolled_out(&out);
    let printed = stdout(&out);
    // One download per node: the switch reused what the stage fetched.
    assert_eq!(downloads(), 3, "{printed}\n{}", fleet.logs());
    // Every node staged before the first batch switched anything.
    let first_switch = line_of(&printed, "batch 1/3: deploying shop 2");
    for node in ["n1", "n2", "n3"] {
        assert!(
            line_of(&printed, &format!("{node}: staged shop 2")) < first_switch,
            "{printed}"
        );
        assert_eq!(live(&fleet, node).as_deref(), Some("2"), "{node}");
        let log = fleet.node(node).fleet_log();
        assert!(log.contains("switching without a download"), "{log}");
    }

    // --stage-only stages release 3 everywhere, switches nothing, and status --fleet shows it.
    let (v3, _) = served_release(fleet.root.path(), "shop", "3", &origin);
    let out = fleet.rollout("n1", &[v3.to_str().unwrap(), "--stage-only"]);
    fleet.assert_rolled_out(&out);
    assert!(!stdout(&out).contains("deploying shop 3"), "{}", text(&out));
    let status = cutover()
        .args([
            "status",
            "--fleet",
            "--rpc-addr",
            &fleet.node("n3").agent().rpc,
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    for node in ["n1", "n2", "n3"] {
        assert_eq!(live(&fleet, node).as_deref(), Some("2"), "{node}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(node) && l.contains(" 2 ") && l.ends_with("staged 3")),
            "{table}"
        );
    }
    let json = cutover()
        .args(["status", "--fleet", "--json"])
        .args(["--rpc-addr", &fleet.node("n3").agent().rpc])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let mut staged: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["staged"] == "3")
        .map(|row| row["node"].as_str().unwrap())
        .collect();
    staged.sort_unstable();
    assert_eq!(staged, ["n1", "n2", "n3"], "{rows}");
}

#[test]
fn a_node_that_cannot_stage_is_reported_and_nothing_switches() {
    let bad = tempfile::tempdir().unwrap();
    let fleet = fleet_on_v1(3, corrupt_release_2_on_n2(bad.path()));
    let v2 = release(fleet.root.path(), "shop", "2", Behaviour::Serves);
    let out = fleet.rollout("n1", &[v2.to_str().unwrap(), "--max-parallel", "1"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}\n{}", fleet.logs());
    assert!(report.contains("n2: FAILED: could not stage"), "{report}");
    // The agent's own reason reaches the coordinator.
    assert!(report.contains("checksum mismatch"), "{report}");
    let n2 = fleet.node("n2").fleet_log();
    assert!(n2.contains("checksum mismatch"), "{n2}");
    assert!(report.contains("nothing switched"), "{report}");
    assert!(!report.contains("batch 1/"), "{report}");
    for node in ["n1", "n2", "n3"] {
        assert_eq!(live(&fleet, node).as_deref(), Some("1"), "{node}");
        let log = fleet.node(node).fleet_log();
        assert!(log.contains("staging shop 2"), "{node}: {log}");
        assert!(!log.contains("deploying shop 2"), "{node}: {log}");
    }
}

#[test]
fn min_staged_holds_every_switch_until_enough_nodes_hold_the_release() {
    let bad = tempfile::tempdir().unwrap();
    let fleet = fleet_on_v1(3, corrupt_release_2_on_n2(bad.path()));
    let v2 = release(fleet.root.path(), "shop", "2", Behaviour::Serves);
    let url = v2.to_str().unwrap();
    // n2 cannot stage: one failure is tolerated, but 3 nodes must hold release 2.
    let out = fleet.rollout("n1", &[url, "--max-failures", "1", "--min-staged", "3"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}\n{}", fleet.logs());
    assert!(report.contains("fewer than --min-staged 3"), "{report}");
    for node in ["n1", "n2", "n3"] {
        assert_eq!(live(&fleet, node).as_deref(), Some("1"), "{node}");
    }
    // Two are enough: n1 and n3 switch (from what they staged), n2 is reported and stays on 1.
    let out = fleet.rollout("n1", &[url, "--max-failures", "1", "--min-staged", "2"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}\n{}", fleet.logs());
    assert!(report.contains("failed: n2 (could not stage"), "{report}");
    assert_eq!(live(&fleet, "n1").as_deref(), Some("2"));
    assert_eq!(live(&fleet, "n2").as_deref(), Some("1"));
    assert_eq!(live(&fleet, "n3").as_deref(), Some("2"));
    let n1 = fleet.node("n1").fleet_log();
    assert!(n1.contains("already staged"), "{n1}");
}

#[test]
fn a_node_that_joins_mid_rollout_stages_then_switches() {
    // n3, the last to switch, boots release 2 slowly: the rollout is still on when n4 returns.
    let slow_n3 = |i: usize| {
        if i == 3 {
            vec![("SHOP_SLOW".to_owned(), "5000".to_owned())]
        } else {
            Vec::new()
        }
    };
    let mut fleet = fleet_on_v1(4, slow_n3);
    fleet.node_mut("n4").kill();
    fleet.wait_alive(3);
    let v2 = release(fleet.root.path(), "shop", "2", Behaviour::SlowWhereMarked);
    let progress = fleet.root.path().join("rollout.out");
    let mut rollout = cutover()
        .arg("rollout")
        .arg(&v2)
        .args(["--max-parallel", "1"])
        .args(["--rpc-addr", &fleet.node("n1").agent().rpc])
        .args(["--timeout", "40s", "--unreachable-after", "6s"])
        .stdout(std::fs::File::create(&progress).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&progress).unwrap_or_default();
    wait_until("n2 to switch", ROLLOUT, || {
        read().contains("n2: serves shop 2")
    });

    // n4 comes back while n3 still has to switch: two of its three peers run 2.
    assert!(!read().contains("n3: serves shop 2"), "{}", read());
    let join = fleet.node("n1").agent().bind.clone();
    let n4 = fleet.node_mut("n4");
    n4.start_supervisor();
    n4.start_agent(Some(join));
    wait_until("n4 to run shop 2", ROLLOUT, || {
        fleet
            .node("n4")
            .fleet_log()
            .contains("deploy shop 2: deployed")
    });
    assert_eq!(live(&fleet, "n4").as_deref(), Some("2"));
    let mut ended = None;
    wait_until("the rollout to end", ROLLOUT, || {
        ended = rollout.try_wait().unwrap();
        ended.is_some()
    });
    let log = fleet.node("n4").fleet_log();
    eprintln!(
        "{}",
        log.lines().nth(line_of(&log, "catching up shop")).unwrap()
    );
    let staging = line_of(&log, "staging shop 2");
    assert!(staging < line_of(&log, "deploying shop 2"), "{log}");
    assert!(log.contains("switching without a download"), "{log}");
    assert!(
        line_of(&log, "stage shop 2: staged") < line_of(&log, "deploy shop 2: deployed"),
        "{log}"
    );
}
