//! End-to-end rollouts on real nodes (Serf agent + supervisor each): batches, health gating,
//! halt and revert, a node killed mid-rollout and its catching up, dependency order.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::fleet::{release, text, Behaviour, Fleet};
use crate::support::serf::GOSSIP;
use crate::support::{cutover, wait_until};

/// A whole rollout in these tests: health gating plus generous coordination on a loaded box.
const ROLLOUT: Duration = Duration::from_secs(120);

/// Starts `n` nodes and puts shop 1 on all of them at once.
fn fleet_on_v1(n: usize, env: impl Fn(usize) -> Vec<(String, String)>) -> Fleet {
    let fleet = Fleet::start(n, true, env);
    let v1 = release(fleet.root.path(), "shop", "1", Behaviour::Serves);
    let all = n.to_string();
    let out = fleet.rollout("n1", &[v1.to_str().unwrap(), "--max-parallel", &all]);
    fleet.assert_rolled_out(&out);
    assert_all_live(&fleet, "1");
    fleet
}

/// Every node of `fleet` runs `version` of shop.
fn assert_all_live(fleet: &Fleet, version: &str) {
    for node in &fleet.nodes {
        assert_eq!(
            node.live_version("shop").as_deref(),
            Some(version),
            "{}",
            node.name
        );
    }
}

/// Index of the first stdout line containing `needle`.
fn line_of(stdout: &str, needle: &str) -> usize {
    stdout
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{stdout}"))
}

#[test]
fn three_nodes_go_one_at_a_time_and_publish_their_new_version() {
    let fleet = fleet_on_v1(3, |_| Vec::new());
    let v2 = release(fleet.root.path(), "shop", "2", Behaviour::Serves);
    let out = fleet.rollout("n2", &[v2.to_str().unwrap(), "--max-parallel", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One node at a time: each node serves the new version before the next batch starts.
    let mut previous = 0;
    for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
        let batch = line_of(&stdout, &format!("batch {}/3", i + 1));
        let done = line_of(&stdout, &format!("{node}: serves shop 2"));
        assert!(previous <= batch && batch < done, "{stdout}");
        previous = done;
    }
    assert_all_live(&fleet, "2");
    for node in &fleet.nodes {
        wait_until(&format!("{}'s tag says shop 2", node.name), GOSSIP, || {
            node.agent().tags_seen_by(fleet.nodes[0].agent())["cutover.shop"] == "2"
        });
    }
    let status = cutover()
        .args(["fleet-status", "--rpc-addr", &fleet.nodes[0].agent().rpc])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    for node in ["n1", "n2", "n3"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(node) && l.contains(" 2 ") && l.contains("1/1")),
            "{table}"
        );
    }
}

#[test]
fn a_release_failing_health_on_the_second_node_halts_and_reverts_the_first() {
    let broken_on_n2 = |i: usize| {
        if i == 2 {
            vec![("SHOP_BROKEN".to_owned(), "1".to_owned())]
        } else {
            Vec::new()
        }
    };
    let fleet = fleet_on_v1(3, broken_on_n2);
    let v2 = release(fleet.root.path(), "shop", "2", Behaviour::BrokenWhereMarked);
    let out = fleet.rollout("n1", &[v2.to_str().unwrap(), "--max-parallel", "1"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("n2: FAILED"), "{report}");
    assert!(report.contains("reverted: n1"), "{report}");
    assert!(report.contains("halted"), "{report}");
    assert_all_live(&fleet, "1");
    // The halt came before n3's switch: it staged release 2 with the others, never deployed it.
    assert!(
        !fleet.node("n3").fleet_log().contains("deploying shop 2"),
        "{}",
        fleet.node("n3").fleet_log()
    );
}

#[test]
fn a_node_killed_mid_rollout_is_reported_and_catches_up_when_it_returns() {
    let mut fleet = fleet_on_v1(4, |_| Vec::new());
    let v2 = release(fleet.root.path(), "shop", "2", Behaviour::Serves);
    let progress = fleet.root.path().join("rollout.out");
    let mut rollout = cutover()
        .arg("rollout")
        .arg(&v2)
        .args([
            "--max-parallel",
            "1",
            "--rpc-addr",
            &fleet.node("n1").agent().rpc,
        ])
        .args([
            "--timeout",
            "40s",
            "--unreachable-after",
            "12s",
            "--query-timeout",
            "3s",
        ])
        .stdout(std::fs::File::create(&progress).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    wait_until("n1 updated", ROLLOUT, || {
        std::fs::read_to_string(&progress)
            .unwrap_or_default()
            .contains("n1: serves shop 2")
    });
    fleet.node_mut("n3").kill();
    let mut status = None;
    wait_until("the rollout to end", ROLLOUT, || {
        status = rollout.try_wait().unwrap();
        status.is_some()
    });
    let stdout = std::fs::read_to_string(&progress).unwrap();
    assert_eq!(status.unwrap().code(), Some(3), "{stdout}");
    assert!(
        stdout.contains("n3: UNREACHABLE"),
        "{stdout}\n{}",
        fleet.logs()
    );
    assert!(
        !stdout.contains("n2: UNREACHABLE"),
        "{stdout}\n{}",
        fleet.logs()
    );
    assert!(started.elapsed() < ROLLOUT, "{stdout}");
    for node in ["n1", "n2", "n4"] {
        assert_eq!(
            fleet.node(node).live_version("shop").as_deref(),
            Some("2"),
            "{node}\n{stdout}\n{}",
            fleet.logs()
        );
    }

    // n3 comes back: its supervisor still runs release 1, the fleet runs 2; it catches up alone.
    let join = fleet.node("n1").agent().bind.clone();
    let n3 = fleet.node_mut("n3");
    n3.start_supervisor();
    let back = Instant::now();
    n3.start_agent(Some(join));
    let n3 = fleet.node("n3");
    wait_until("n3 to run shop 2 again", ROLLOUT, || {
        n3.live_version("shop").as_deref() == Some("2")
    });
    eprintln!(
        "n3 ran the fleet's version {:?} after rejoining",
        back.elapsed()
    );
    assert!(
        n3.fleet_log().contains("catching up shop: 1 -> 2"),
        "{}",
        n3.fleet_log()
    );
}

#[test]
fn apps_go_out_in_dependency_order() {
    let fleet = Fleet::start(2, true, |_| Vec::new());
    let dir = fleet.root.path();
    let auth = release(dir, "auth", "7", Behaviour::Serves);
    let shop = release(dir, "shop", "3", Behaviour::Serves);
    let plan = dir.join("plan.yml");
    std::fs::write(
        &plan,
        format!(
            "apps:\n  - {{ name: shop, manifest: '{}', depends_on: [auth] }}\n  - {{ name: auth, manifest: '{}' }}\n",
            shop.display(),
            auth.display()
        ),
    )
    .unwrap();
    let out = fleet.rollout(
        "n1",
        &["--plan", plan.to_str().unwrap(), "--max-parallel", "2"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Every node serves auth before shop's first batch starts.
    let shop_starts = line_of(&stdout, "deploying shop 3");
    assert!(
        line_of(&stdout, "n1: serves auth 7") < shop_starts,
        "{stdout}"
    );
    assert!(
        line_of(&stdout, "n2: serves auth 7") < shop_starts,
        "{stdout}"
    );
    for node in &fleet.nodes {
        assert_eq!(node.live_version("auth").as_deref(), Some("7"));
        assert_eq!(node.live_version("shop").as_deref(), Some("3"));
    }
}

/// Sends query `name` with `payload` to node `to` through its own agent; returns its ack.
fn ack_of(fleet: &Fleet, to: &str, name: &str, payload: &str) -> serde_json::Value {
    let out = fleet.node(to).agent().cli(&[
        "query",
        "-format=json",
        "-timeout=8s",
        &format!("-node={to}"),
        name,
        payload,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let answer = json["Responses"][to]
        .as_str()
        .unwrap_or_else(|| panic!("no answer from {to}: {json}"));
    serde_json::from_str(answer).unwrap()
}

#[test]
fn a_repeated_copy_of_a_deploy_query_starts_the_deploy_once() {
    let fleet = fleet_on_v1(1, |_| Vec::new());
    let v2 = release(fleet.root.path(), "shop", "2", Behaviour::Serves);
    let url = v2.to_str().unwrap();
    let log = || fleet.node("n1").fleet_log();
    let deploys = || log().matches("deploying shop 2").count();
    let first = ack_of(&fleet, "n1", "cutover-deploy", &format!("{url} run=aaa"));
    assert_eq!(first["ok"], true, "{first}");
    wait_until("n1 to run shop 2", ROLLOUT, || {
        fleet.node("n1").live_version("shop").as_deref() == Some("2")
    });
    wait_until("the first deploy to be logged", ROLLOUT, || deploys() == 1);
    // The same run's copy, after the work finished: accepted again, nothing started.
    wait_until("the first worker to finish", ROLLOUT, || {
        log().contains("deploy shop 2: deployed")
    });
    let copy = ack_of(&fleet, "n1", "cutover-deploy", &format!("{url} run=aaa"));
    assert_eq!(copy["ok"], true, "{copy}");
    // Another run of the same URL is new work: it starts (and would be refused as busy if the
    // copy had started a worker that still runs).
    let other = ack_of(&fleet, "n1", "cutover-deploy", &format!("{url} run=bbb"));
    assert_eq!(other["ok"], true, "{other}");
    wait_until("the second run to be logged", ROLLOUT, || deploys() >= 2);
    wait_until("the second worker to finish", ROLLOUT, || {
        log().matches("deploy shop 2: ").count() >= 2
    });
    assert_eq!(deploys(), 2, "{}", log());
}
