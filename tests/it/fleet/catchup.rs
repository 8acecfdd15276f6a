//! Catching up must not undo what happened while it waited: a node's catch-up reads what the node
//! runs, then waits (up to a minute) for its peers; a rollout that reaches the node meanwhile wins.

use std::time::Duration;

use crate::support::fleet::{release, text, Behaviour, Fleet};
use crate::support::serf::GOSSIP;
use crate::support::{cutover, wait_until};

/// The catch-up's own wait for peers is a minute; it ends well within this.
const DECIDED: Duration = Duration::from_secs(90);

#[test]
fn a_catch_up_leaves_alone_a_version_deployed_while_it_waited_for_peers() {
    let fleet = Fleet::start(2, true, |_| Vec::new());
    let root = fleet.root.path().to_owned();
    let v0 = release(&root, "shop", "0", Behaviour::Serves);
    let v1 = release(&root, "shop", "1", Behaviour::Serves);
    let v2 = release(&root, "shop", "2", Behaviour::Serves);
    // n2 runs shop 0 (deployed directly: no tag published), n1 runs nothing yet.
    let n2 = fleet.node("n2");
    let out = n2.apply(&v0);
    assert!(out.status.success(), "{}", text(&out));

    // n2's catch-up, as its handler starts it when n2 (re)joins (started here, so that the
    // test does not hang on Serf delivering that event): it reads "shop 0", publishes it, and
    // waits for a peer that publishes a version (n1 has none yet).
    let mut catch_up = cutover()
        .args(["serf-handler", "--catch-up"])
        .envs(n2.env.iter().map(|(k, v)| (k, v)))
        .env("SERF_SELF_NAME", "n2")
        .env("SERF_RPC_ADDR", &n2.agent().rpc)
        .spawn()
        .expect("start n2's catch-up");
    wait_until("n2's catch-up to publish shop 0", GOSSIP, || {
        let (n1, n2) = (fleet.node("n1").agent(), fleet.node("n2").agent());
        n2.tags_seen_by(n1)["cutover.shop"] == "0"
    });

    // Meanwhile shop 2 reaches n2 (directly, as a rollout's deploy would) ...
    let out = n2.apply(&v2);
    assert!(out.status.success(), "{}", text(&out));
    // ... and n1 gets shop 1 through a rollout of its own, so n2's only peer now runs 1.
    let picked = fleet.node("n1").agent().cli(&["tags", "-set", "pick=n1"]);
    assert!(picked.status.success(), "{}", text(&picked));
    let out = fleet.rollout("n1", &[v1.to_str().unwrap(), "--tag", "pick=n1"]);
    fleet.assert_rolled_out(&out);

    let mut ended = None;
    wait_until("n2's catch-up to end", DECIDED, || {
        ended = catch_up.try_wait().unwrap();
        ended.is_some()
    });
    let log = n2.fleet_log();
    assert!(
        log.contains("catch-up: shop went from 0 to 2 meanwhile; left as is"),
        "{log}\n{}",
        fleet.logs()
    );
    assert!(!log.contains("catching up shop"), "{log}");
    assert_eq!(n2.live_version("shop").as_deref(), Some("2"), "{log}");
}
