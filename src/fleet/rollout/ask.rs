//! Asking nodes and waiting for their answers: queries gathered with resent copies, work handed to
//! nodes (asked again while they are busy), and status polls that follow nodes until each one
//! settles or its deadlines pass.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::inputs::Options;
use super::outcome::{NodeEnd, Progress};
use crate::fleet::serf::{self, Serf};
use crate::fleet::wire::{self, Ack, NodeState};

/// Polls the status of `nodes` until `settled` decides each one, or its deadlines pass.
/// `settled` returns `Some(Ok(msg))` for success, `Some(Err(why))` for failure, `None` to wait.
///
/// A new query goes out every `poll` even while earlier ones are still open (up to
/// `serf::QUERIES_IN_FLIGHT`): gossip on a busy host loses a message now and then, and one lost query
/// or answer must cost a poll interval, not a whole query timeout.
pub(super) async fn follow(
    serf: &Serf,
    nodes: &[String],
    opts: &Options,
    out: &Progress,
    settled: impl Fn(&str, &NodeState) -> Option<Result<String, String>>,
) -> BTreeMap<String, NodeEnd> {
    let start = Instant::now();
    let mut ends = BTreeMap::new();
    let mut last_seen: BTreeMap<String, Instant> =
        nodes.iter().map(|n| (n.clone(), start)).collect();
    let mut queries = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(opts.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while ends.len() < nodes.len() {
        let pending: Vec<String> = nodes
            .iter()
            .filter(|n| !ends.contains_key(*n))
            .cloned()
            .collect();
        let mut states = BTreeMap::new();
        tokio::select! {
            _ = tick.tick() => {
                if queries.len() < serf::QUERIES_IN_FLIGHT {
                    let (serf, timeout) = (serf.clone(), opts.query_timeout);
                    let asked = pending.clone();
                    queries.spawn(async move {
                        serf.query(wire::QUERY_STATUS, "", &asked, timeout).await
                    });
                }
            }
            Some(done) = queries.join_next() => match done {
                Ok(Ok(result)) => states = parse_states(result.responses),
                // Counted as silence below: a node is not written off for one failed query.
                Ok(Err(err)) => out.say(&format!("status query failed: {err}")),
                Err(err) => out.say(&format!("status query failed: {err}")),
            },
        }
        let now = Instant::now();
        for node in &pending {
            if let Some(state) = states.get(node) {
                last_seen.insert(node.clone(), now);
                match settled(node, state) {
                    Some(Ok(msg)) => {
                        out.say(&format!("{node}: {msg}"));
                        ends.insert(node.clone(), NodeEnd::Serving);
                        continue;
                    }
                    Some(Err(why)) => {
                        out.say(&format!("{node}: FAILED: {why}"));
                        ends.insert(node.clone(), NodeEnd::Failed(why));
                        continue;
                    }
                    None => {}
                }
            }
            let silent = last_seen
                .get(node)
                .map_or(Duration::ZERO, |t| now.duration_since(*t));
            if silent >= opts.unreachable_after {
                let why = format!("no answer for {}s", silent.as_secs());
                out.say(&format!("{node}: UNREACHABLE: {why}"));
                ends.insert(node.clone(), NodeEnd::Unreachable(why));
            } else if now.duration_since(start) >= opts.node_timeout {
                let why = format!("not done within {}s", opts.node_timeout.as_secs());
                out.say(&format!("{node}: FAILED: {why}"));
                ends.insert(node.clone(), NodeEnd::Failed(why));
            }
        }
    }
    ends
}

/// `Serf::gather` with the rollout's query timeout, reporting the first failed query.
pub(super) async fn gather(
    serf: &Serf,
    name: &str,
    payload: &str,
    nodes: &[String],
    opts: &Options,
    patience: Duration,
    out: &Progress,
) -> BTreeMap<String, String> {
    let (answers, failure) = serf
        .gather(name, payload, nodes, opts.query_timeout, patience)
        .await;
    if let Some(err) = failure {
        out.say(&format!("{name} query failed: {err}"));
    }
    answers
}

/// Each answering node's state; nodes that did not answer within `patience` are absent.
pub(super) async fn status_of(
    serf: &Serf,
    nodes: &[String],
    opts: &Options,
    patience: Duration,
    out: &Progress,
) -> BTreeMap<String, NodeState> {
    if nodes.is_empty() {
        return BTreeMap::new();
    }
    parse_states(gather(serf, wire::QUERY_STATUS, "", nodes, opts, patience, out).await)
}

/// Status answers read as node states; an answer that is not cutover's is dropped.
fn parse_states(answers: BTreeMap<String, String>) -> BTreeMap<String, NodeState> {
    answers
        .into_iter()
        .filter_map(|(node, text)| Some((node, serde_json::from_str(&text).ok()?)))
        .collect()
}

/// Pause before asking a busy node again.
const BUSY_RETRY: Duration = Duration::from_millis(300);

/// Sends query `name` (a deploy or a stage, `what` in messages) to `nodes` and sorts the answers:
/// the nodes that accepted, and how the others ended (refused, unreadable, silent).
///
/// A node still finishing its previous run (its worker publishing tags after the app went live)
/// answers "busy": it is asked again until the per-node deadline instead of failing it.
pub(super) async fn start_work(
    serf: &Serf,
    name: &str,
    what: &str,
    payload: &str,
    nodes: &[String],
    opts: &Options,
    out: &Progress,
) -> (Vec<String>, BTreeMap<String, NodeEnd>) {
    let mut ends = BTreeMap::new();
    let mut accepted = Vec::new();
    let busy_deadline = tokio::time::Instant::now() + opts.node_timeout;
    let mut asking = nodes.to_vec();
    while !asking.is_empty() {
        let acks = gather(
            serf,
            name,
            payload,
            &asking,
            opts,
            opts.unreachable_after,
            out,
        )
        .await;
        let mut busy = Vec::new();
        for node in &asking {
            match acks.get(node).map(|text| serde_json::from_str::<Ack>(text)) {
                Some(Ok(ack)) if ack.ok => accepted.push(node.clone()),
                Some(Ok(ack)) if ack.is_busy() && tokio::time::Instant::now() < busy_deadline => {
                    busy.push(node.clone());
                }
                Some(Ok(ack)) => {
                    out.say(&format!("{node}: refused the {what}: {}", ack.msg));
                    ends.insert(node.clone(), NodeEnd::Refused(ack.msg));
                }
                Some(Err(_)) => {
                    out.say(&format!(
                        "{node}: answered the {what} query with something not cutover's"
                    ));
                    ends.insert(
                        node.clone(),
                        NodeEnd::Refused("unreadable answer".to_owned()),
                    );
                }
                None => {
                    let why = format!("no answer to the {what} query");
                    out.say(&format!("{node}: UNREACHABLE: {why}"));
                    ends.insert(node.clone(), NodeEnd::Unreachable(why));
                }
            }
        }
        if !busy.is_empty() {
            out.say(&format!(
                "{}: still finishing a previous run; asking again",
                busy.join(", ")
            ));
            tokio::time::sleep(BUSY_RETRY).await;
        }
        asking = busy;
    }
    (accepted, ends)
}
