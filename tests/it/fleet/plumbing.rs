//! Serf plumbing that needs no supervisor: queries reach every node's handler and fit in 1 KiB,
//! a wrong key keeps an agent out, silent nodes never hang a rollout, bad plans are refused.

use std::time::{Duration, Instant};

use crate::support::fleet::{release, text, Behaviour, Fleet};
use crate::support::serf::{AgentConfig, SerfAgent, GOSSIP};
use crate::support::{cutover, fixture, wait_until};

#[test]
fn status_queries_reach_every_nodes_handler_and_fit_in_one_kib() {
    let fleet = Fleet::start(3, false, |_| Vec::new());
    let out =
        fleet.nodes[0]
            .agent()
            .cli(&["query", "-format=json", "-timeout=8s", "cutover-status", ""]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let responses = json["Responses"].as_object().expect("responses");
    let mut names: Vec<&String> = responses.keys().collect();
    names.sort();
    assert_eq!(names, ["n1", "n2", "n3"], "{json}");
    for (node, answer) in responses {
        let answer = answer.as_str().unwrap();
        assert!(answer.len() <= 1024, "{node}: {} bytes", answer.len());
        // No supervisor runs here: each handler says so instead of staying silent.
        let state: serde_json::Value = serde_json::from_str(answer).unwrap();
        assert!(state["err"].as_str().is_some(), "{node}: {answer}");
    }
}

#[test]
fn fleet_status_lists_every_member_and_its_published_versions() {
    let fleet = Fleet::start(2, false, |_| Vec::new());
    let set = fleet.nodes[1]
        .agent()
        .cli(&["tags", "-set", "cutover.shop=1.4.2"]);
    assert!(set.status.success(), "{}", text(&set));
    let rpc = fleet.nodes[0].agent().rpc.clone();
    let mut last = String::new();
    wait_until("n2's tag in fleet-status", GOSSIP, || {
        let out = cutover()
            .args(["fleet-status", "--rpc-addr", &rpc])
            .output()
            .unwrap();
        last = text(&out);
        out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.starts_with("n2 ") && l.contains("shop") && l.contains("1.4.2"))
    });
    assert!(last.contains("\nn1 "), "{last}");
}

#[test]
fn an_agent_with_the_wrong_key_can_neither_join_nor_trigger_a_deploy() {
    let fleet = Fleet::start(2, false, |_| Vec::new());
    let outsider_dir = fleet.root.path().join("outsider");
    std::fs::create_dir_all(&outsider_dir).unwrap();
    let outsider = SerfAgent::start(&AgentConfig {
        name: "outsider".into(),
        encrypt: Some(crate::support::serf::keygen()),
        log: outsider_dir.join("serf.log"),
        ..AgentConfig::default()
    });
    let join = outsider.cli(&["join", &fleet.nodes[0].agent().bind]);
    assert!(
        !join.status.success(),
        "a wrong key joined: {}",
        text(&join)
    );
    assert_eq!(fleet.nodes[0].agent().alive_members(), ["n1", "n2"]);

    // The outsider fires a deploy event and a deploy query at whoever hears it...
    let evil = "file:///nonexistent/evil.yml";
    let ev = outsider.cli(&["event", "-coalesce=false", "deploy", evil]);
    assert!(ev.status.success(), "{}", text(&ev));
    let q = outsider.cli(&[
        "query",
        "-format=json",
        "-timeout=2s",
        "cutover-deploy",
        evil,
    ]);
    let answers: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap_or_default();
    assert!(
        answers["Responses"]
            .as_object()
            .is_none_or(|r| r.is_empty()),
        "{answers}"
    );
    // ...then a member sends a real one. Events are ordered per sender, not across senders, so
    // the real event arriving proves only that the handlers run; the outsider's must never.
    let good = "file:///nonexistent/good.yml";
    let ev = fleet.nodes[1]
        .agent()
        .cli(&["event", "-coalesce=false", "deploy", good]);
    assert!(ev.status.success(), "{}", text(&ev));
    for node in &fleet.nodes {
        wait_until(
            &format!("{} handles the member's event", node.name),
            GOSSIP,
            || node.fleet_log().contains(good),
        );
        assert!(
            !node.fleet_log().contains("evil"),
            "{}: {}",
            node.name,
            node.fleet_log()
        );
    }
}

#[test]
fn a_rollout_reports_silent_and_failed_members_and_ends_within_its_deadline() {
    let mut fleet = Fleet::start(3, false, |_| Vec::new());
    let manifest = release(fleet.root.path(), "shop", "2", Behaviour::Serves);
    fleet.node_mut("n3").kill();
    fleet.wait_alive(2);
    let started = Instant::now();
    let out = fleet.rollout("n1", &[manifest.to_str().unwrap(), "--max-parallel", "1"]);
    let took = started.elapsed();
    let report = text(&out);
    // No supervisor answers anywhere: nothing can be deployed, every node is reported, and the
    // exit code says "finished, some nodes unreachable" rather than hanging or claiming success.
    assert_eq!(out.status.code(), Some(3), "{report}");
    assert!(report.contains("n3"), "{report}");
    assert!(report.contains("unreachable: n1"), "{report}");
    assert!(took < Duration::from_secs(30), "took {took:?}: {report}");
}

#[test]
fn a_dependency_cycle_is_refused_before_anything_is_deployed() {
    let out = cutover()
        .args(["rollout", "--plan"])
        .arg(fixture("fleet/plan-cycle.yml"))
        .args(["--rpc-addr", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dependency cycle between web, api"),
        "{stderr}"
    );
}

/// With trusted keys in the nodes' environment, a deploy event and a deploy query both end in
/// the agent's signature check: refused, nothing run, and the node's log says why.
#[test]
fn with_trusted_keys_events_and_queries_refuse_an_unsigned_manifest() {
    use crate::support::minisign::{trust_file, Key};

    let dir = tempfile::tempdir().unwrap();
    let trust = trust_file(dir.path(), &[&Key::generate()]);
    let marker = dir.path().join("hook-ran");
    let manifest = dir.path().join("shop.yml");
    std::fs::write(
        &manifest,
        format!(
            "commands:\n  post: [\"touch {m}\"]\n  failure: [\"touch {m}\"]\n",
            m = marker.display()
        ),
    )
    .unwrap();
    let app_manifest = release(dir.path(), "shop", "2", Behaviour::Serves);
    let fleet = Fleet::start(1, false, |_| {
        vec![("CUTOVER_TRUST".into(), trust.display().to_string())]
    });
    let node = &fleet.nodes[0];
    let url = format!("file://{}", manifest.display());
    let sent = node
        .agent()
        .cli(&["event", "-coalesce=false", "deploy", &url]);
    assert!(sent.status.success(), "{}", text(&sent));
    wait_until("the event refused", GOSSIP, || {
        node.fleet_log()
            .contains("deploy event refused: the manifest is not trusted")
    });
    let app_url = format!("file://{}", app_manifest.display());
    let asked = node
        .agent()
        .cli(&["query", "-timeout=8s", "cutover-deploy", &app_url]);
    assert!(asked.status.success(), "{}", text(&asked));
    wait_until("the query's deploy refused", GOSSIP, || {
        node.fleet_log()
            .contains("exited with 8 (the manifest is not trusted)")
    });
    assert!(!marker.exists(), "no hook of an untrusted manifest runs");
}

#[test]
fn a_query_for_more_node_names_than_fit_in_one_kib_is_split_and_every_node_answers() {
    let fleet = Fleet::start(2, false, |_| Vec::new());
    // 60 names of 30 characters and the two real nodes: far past Serf's 1 KiB for one query.
    let mut nodes: Vec<String> = (0..60)
        .map(|i| format!("web-{i:04}.rack-7.dc1.example.com"))
        .collect();
    nodes.extend(["n1".to_owned(), "n2".to_owned()]);
    let agent = fleet.nodes[0].agent();

    // Serf itself refuses them in one query.
    let mut args = vec!["query".to_owned(), "-timeout=3s".to_owned()];
    args.extend(nodes.iter().map(|n| format!("-node={n}")));
    args.extend(["cutover-status".to_owned(), String::new()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let one = agent.cli(&args);
    assert!(
        text(&one).contains("exceeds limit"),
        "serf took them all in one query: {}",
        text(&one)
    );

    let serf = cutover::fleet::serf::Serf::new("serf".into(), Some(agent.rpc.clone()), None);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let result = runtime
        .block_on(serf.query("cutover-status", "", &nodes, Duration::from_secs(3)))
        .expect("the query in groups");
    let mut answered: Vec<&String> = result.responses.keys().collect();
    answered.sort();
    assert_eq!(answered, ["n1", "n2"], "{result:?}");
}
