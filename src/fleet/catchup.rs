//! Catching up: a node that (re)joins compares what it runs with what its peers run (their status
//! answers, else their tags) and deploys the version most of them run, asking a peer that runs it
//! for its manifest URL; it stages that release first and then switches, as a rollout's nodes do.
//!
//! It runs detached, started by the handler on the member-join event of the node itself, so it
//! first waits (bounded) for its supervisor to answer and for peers to show up in the gossip.
//! Only apps the node already runs are caught up: which apps belong on which node is the
//! operator's choice (tags), not a vote.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::node::Node;
use super::serf::{Member, Serf};
use super::wire::{self, Ack, NodeState};
use super::{tags, worker};
use crate::protocol::StatusReport;

/// How long a joining node waits for its supervisor and its peers before giving up.
const WAIT: Duration = Duration::from_secs(60);
/// Between two looks at the supervisor or the member list while waiting.
const PAUSE: Duration = Duration::from_millis(250);
/// How long peers get to answer a manifest query.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(node: &Node, serf: &Serf) -> ExitCode {
    let me = std::env::var("SERF_SELF_NAME").unwrap_or_default();
    let deadline = Instant::now() + WAIT;
    let Some(report) = wait_for_supervisor(node, deadline).await else {
        node.log(&format!(
            "catch-up: no supervisor answered within {WAIT:?}; nothing done"
        ));
        return ExitCode::FAILURE;
    };
    // Peers learn what this node runs again (a restarted agent has lost its tags).
    worker::publish(node, serf).await;
    let Some(peers) = wait_for_peers(serf, &me, deadline).await else {
        node.log("catch-up: no peer publishes cutover versions; nothing to catch up on");
        return ExitCode::SUCCESS;
    };
    let mut code = ExitCode::SUCCESS;
    for app in &report.apps {
        let Some((majority, peers)) =
            settled_majority(serf, &me, peers.clone(), &app.name, deadline).await
        else {
            node.log(&format!(
                "catch-up: peers agree on no single {} version; left as is",
                app.name
            ));
            continue;
        };
        // The wait for peers can be long (up to a minute on a busy host), so what this node ran
        // when the catch-up began is looked at again now, and once more just before the deploy.
        if moved_on(node, &app.name, &app.live_version).await {
            continue;
        }
        if app.live_version.as_deref() == Some(majority.version.as_str()) {
            node.log(&format!(
                "catch-up: {} {} matches the fleet",
                app.name, majority.version
            ));
            continue;
        }
        let runs = app.live_version.as_deref().unwrap_or("nothing");
        let Some(url) = ask_manifest(serf, &peers, &app.name, &majority.version).await else {
            node.log(&format!(
                "catch-up: {} runs {} but no peer knows the manifest of {}; left as is",
                app.name, runs, majority.version
            ));
            code = ExitCode::FAILURE;
            continue;
        };
        if moved_on(node, &app.name, &app.live_version).await {
            continue;
        }
        node.log(&format!(
            "catching up {}: {} -> {} ({} of {} peers run it), from {url}",
            app.name, runs, majority.version, majority.count, majority.total
        ));
        // Staged first, as a rollout's nodes are: the deploy then reuses the staged tree.
        if worker::stage(node, &url).await != ExitCode::SUCCESS
            || worker::deploy(node, serf, &url).await != ExitCode::SUCCESS
        {
            code = ExitCode::FAILURE;
        }
    }
    code
}

/// Whether `app` no longer runs `was` on this node: then someone else (a rollout reaching this
/// node) changed it while the catch-up waited for its peers, and the catch-up must not undo that.
/// Said in the log when so.
async fn moved_on(node: &Node, app: &str, was: &Option<String>) -> bool {
    let Ok(report) = node.status().await else {
        node.log(&format!(
            "catch-up: the supervisor did not answer; {app} left as is"
        ));
        return true;
    };
    let now = report
        .apps
        .into_iter()
        .find(|a| a.name == app)
        .and_then(|a| a.live_version);
    if now == *was {
        return false;
    }
    node.log(&format!(
        "catch-up: {app} went from {} to {} meanwhile; left as is",
        was.as_deref().unwrap_or("nothing"),
        now.as_deref().unwrap_or("nothing")
    ));
    true
}

async fn wait_for_supervisor(node: &Node, deadline: Instant) -> Option<StatusReport> {
    loop {
        if let Ok(report) = node.status().await {
            return Some(report);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// The version of `app` most peers run, read from their answers to a status query (tags reach a
/// newcomer by gossip and may lag behind; a peer that does not answer counts by its tags). A tie
/// means the fleet is mid-rollout or its last nodes have not settled yet: look again until the
/// deadline rather than give up at once.
async fn settled_majority(
    serf: &Serf,
    me: &str,
    mut peers: Vec<Member>,
    app: &str,
    deadline: Instant,
) -> Option<(tags::Majority, Vec<Member>)> {
    loop {
        let live = live_versions(serf, peers).await;
        if let Some(majority) = tags::majority(&live, app) {
            return Some((majority, live));
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(PAUSE).await;
        peers = wait_for_peers(serf, me, deadline).await.unwrap_or(live);
    }
}

/// `peers` with each answering peer's tags replaced by the versions it reports running now.
async fn live_versions(serf: &Serf, mut peers: Vec<Member>) -> Vec<Member> {
    let names: Vec<String> = peers.iter().map(|m| m.name.clone()).collect();
    let (answers, _) = serf
        .gather(wire::QUERY_STATUS, "", &names, ASK_TIMEOUT, ASK_TIMEOUT)
        .await;
    for peer in &mut peers {
        let Some(state) = answers
            .get(&peer.name)
            .and_then(|text| serde_json::from_str::<NodeState>(text).ok())
        else {
            continue;
        };
        peer.tags.retain(|key, _| !key.starts_with(tags::PREFIX));
        for app in state.apps {
            if let Some(version) = app.v {
                peer.tags.insert(tags::key(&app.n), version);
            }
        }
    }
    peers
}

/// Alive members other than `me` once at least one of them publishes a cutover tag.
async fn wait_for_peers(serf: &Serf, me: &str, deadline: Instant) -> Option<Vec<Member>> {
    loop {
        if let Ok(members) = serf.members(&[]).await {
            let peers: Vec<Member> = members
                .into_iter()
                .filter(|m| m.name != me && m.is_alive())
                .collect();
            if peers.iter().any(|m| !tags::versions(m).is_empty()) {
                return Some(peers);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// Asks the peers that run `app` `version` for the manifest they deployed it from.
async fn ask_manifest(serf: &Serf, peers: &[Member], app: &str, version: &str) -> Option<String> {
    let holders: Vec<String> = peers
        .iter()
        .filter(|m| tags::versions(m).get(app).map(String::as_str) == Some(version))
        .map(|m| m.name.clone())
        .collect();
    let payload = format!("{app} {version}");
    // A few tries: on a busy host a query or its answers can be lost, and one loss must not
    // leave the node on an old version until the next rollout.
    for _attempt in 0..3 {
        let Ok(result) = serf
            .query(wire::QUERY_MANIFEST, &payload, &holders, ASK_TIMEOUT)
            .await
        else {
            continue;
        };
        let url = result
            .responses
            .values()
            .filter_map(|text| serde_json::from_str::<Ack>(text).ok())
            .find(|ack| ack.ok && ack.v.as_deref() == Some(version))
            .and_then(|ack| ack.url);
        if url.is_some() {
            return url;
        }
    }
    None
}
