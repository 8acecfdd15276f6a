//! Catching up must not undo what happened while it waited: a node's catch-up reads what the node
//! runs, then waits (up to a minute) for its peers; a rollout that reaches the node meanwhile wins.

use std::time::Duration;

use crate::support::fleet::{release, text, Behaviour, Fleet};
use crate::support::serf::GOSSIP;
use crate::support::wait_until;

/// The catch-up's own wait for peers is a minute; its decision comes well within this.
const DECIDED: Duration = Duration::from_secs(90);

#[test]
fn a_catch_up_leaves_alone_a_version_deployed_while_it_waited_for_peers() {
    let mut fleet = Fleet::start(2, true, |_| Vec::new());
    let root = fleet.root.path().to_owned();
    let v0 = release(&root, "shop", "0", Behaviour::Serves);
    let v1 = release(&root, "shop", "1", Behaviour::Serves);
    let v2 = release(&root, "shop", "2", Behaviour::Serves);
    // n2 runs shop 0 (deployed directly: no tag published), n1 runs nothing yet.
    let out = fleet.node("n2").apply(&v0);
    assert!(out.status.success(), "{}", text(&out));

    // n2's agent restarts: its catch-up reads "shop 0", publishes it, and waits for a peer
    // that publishes a version (n1 has none yet).
    let join = fleet.node("n1").agent().bind.clone();
    fleet.node_mut("n2").agent = None;
    // Serf refuses a name still alive in the cluster: rejoin once n1 has seen n2 fail.
    wait_until("n1 to see n2 fail", GOSSIP, || {
        !fleet
            .node("n1")
            .agent()
            .alive_members()
            .contains(&"n2".to_owned())
    });
    fleet.node_mut("n2").start_agent(Some(join));
    wait_until("n2's catch-up to publish shop 0", GOSSIP, || {
        let fleet = &fleet;
        fleet
            .node("n2")
            .agent()
            .tags_seen_by(fleet.node("n1").agent())["cutover.shop"]
            == "0"
    });

    // Meanwhile shop 2 reaches n2 (directly, as a rollout's deploy would) ...
    let out = fleet.node("n2").apply(&v2);
    assert!(out.status.success(), "{}", text(&out));
    // ... and n1 gets shop 1 through a rollout of its own, so n2's only peer now runs 1.
    let picked = fleet.node("n1").agent().cli(&["tags", "-set", "pick=n1"]);
    assert!(picked.status.success(), "{}", text(&picked));
    let out = fleet.rollout("n1", &[v1.to_str().unwrap(), "--tag", "pick=n1"]);
    fleet.assert_rolled_out(&out);

    let n2 = fleet.node("n2");
    wait_until("n2's catch-up to decide", DECIDED, || {
        let log = n2.fleet_log();
        log.contains("catching up shop") || log.contains("catch-up: shop")
    });
    let log = n2.fleet_log();
    assert!(
        log.contains("catch-up: shop went from 0 to 2 meanwhile; left as is"),
        "{log}\n{}",
        fleet.logs()
    );
    assert_eq!(n2.live_version("shop").as_deref(), Some("2"), "{log}");
}
