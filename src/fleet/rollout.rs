//! A coordinated rollout of one app across the members of a Serf cluster: plan the batches, then
//! deploy batch by batch through the nodes' query handlers, gate each node on its own health, and
//! halt and revert when too many nodes fail.
//!
//! Every wait has a deadline: a node that stops answering is reported as unreachable after
//! `unreachable_after` and the rollout goes on without it (it counts as not serving for
//! `min_healthy`); a node that answers but never serves the new version fails after `node_timeout`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::manifest::Release;
use super::serf::{Serf, SerfError};
use super::wire::{self, Ack, NodeState, RunState};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Serf(#[from] SerfError),
    #[error("no alive member matches {0}: check `serf members` and the --tag filters")]
    NoMembers(String),
    #[error("{serving} nodes serve {app} and --min-healthy is {min}: no node can be taken out; lower --min-healthy or add nodes")]
    NoRoom {
        app: String,
        serving: usize,
        min: usize,
    },
}

/// How a rollout paces itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// Member tag filters, `key=regexp`.
    pub tags: Vec<String>,
    pub max_parallel: usize,
    /// Nodes that must keep serving the app while a batch is out.
    pub min_healthy: usize,
    /// Failed nodes tolerated before the rollout halts and reverts.
    pub max_failures: usize,
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

/// Which nodes a rollout will touch and in what order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub batches: Vec<Vec<Target>>,
    pub current: Vec<String>,
    pub unreachable: Vec<(String, String)>,
    /// Nodes serving the app (any version) before the rollout.
    pub serving: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: String,
    /// The version it runs now, which a revert goes back to.
    pub previous: Option<String>,
    pub serving: bool,
}

/// How one app's rollout ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub updated: Vec<String>,
    pub current: Vec<String>,
    pub unreachable: Vec<(String, String)>,
    pub failed: Vec<(String, String)>,
    pub reverted: Vec<String>,
    /// Why the rollout stopped early, if it did.
    pub halted: Option<String>,
}

/// Prints timestamped progress lines relative to the rollout's start.
pub struct Progress {
    start: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            start: Instant::now(),
        }
    }
}

impl Progress {
    pub fn say(&self, line: &str) {
        println!("[{:>6.1}s] {line}", self.start.elapsed().as_secs_f64());
    }
}

/// Reads the members and their state and plans the batches; changes nothing.
pub async fn plan(serf: &Serf, step: &Step, opts: &Options) -> Result<Plan, RolloutError> {
    let filters = if step.tags.is_empty() {
        &opts.tags
    } else {
        &step.tags
    };
    let mut members = serf.members(filters).await?;
    // Name order: a plan an operator can predict and read, the same from any coordinator.
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let mut plan = Plan::default();
    let mut alive = Vec::new();
    for member in members {
        match member.status.as_str() {
            "alive" => alive.push(member.name),
            "failed" => plan
                .unreachable
                .push((member.name, "Serf marks it failed".to_owned())),
            // A member that left on purpose is not part of the fleet any more.
            _ => {}
        }
    }
    if alive.is_empty() && plan.unreachable.is_empty() {
        return Err(RolloutError::NoMembers(describe(filters)));
    }
    // Twice the query timeout: the old two attempts, now with copies resent in between.
    let states = status_of(
        serf,
        &alive,
        opts,
        opts.query_timeout * 2,
        &Progress::default(),
    )
    .await;
    let app = &step.release.app;
    let mut todo = Vec::new();
    for node in alive {
        let Some(state) = states.get(&node) else {
            plan.unreachable
                .push((node, "no answer to the status query".to_owned()));
            continue;
        };
        if let Some(err) = &state.err {
            plan.unreachable.push((node, err.clone()));
            continue;
        }
        let here = state.app(app);
        let serving = here.is_some_and(|a| a.ok > 0);
        plan.serving += usize::from(serving);
        if here.is_some_and(|a| a.serves(&step.release.version)) {
            plan.current.push(node);
        } else {
            todo.push(Target {
                node,
                previous: here.and_then(|a| a.v.clone()),
                serving,
            });
        }
    }
    plan.batches = batches(todo, plan.serving, opts).ok_or_else(|| RolloutError::NoRoom {
        app: app.clone(),
        serving: plan.serving,
        min: opts.min_healthy,
    })?;
    Ok(plan)
}

/// Cuts `todo` into batches of at most `max_parallel`, smaller when taking that many serving
/// nodes out would leave fewer than `min_healthy`; `None` when not even one can go.
fn batches(todo: Vec<Target>, serving: usize, opts: &Options) -> Option<Vec<Vec<Target>>> {
    let room = serving.saturating_sub(opts.min_healthy);
    if room == 0 && todo.iter().any(|t| t.serving) {
        return None;
    }
    // Nodes that serve nothing yet cost no capacity, but still go at most `max_parallel` at once.
    let size = if todo.iter().any(|t| t.serving) {
        opts.max_parallel.min(room).max(1)
    } else {
        opts.max_parallel.max(1)
    };
    Some(todo.chunks(size).map(<[Target]>::to_vec).collect())
}

/// Prints a plan the way `--dry-run` shows it.
pub fn show(step: &Step, plan: &Plan, opts: &Options) {
    let r = &step.release;
    let nodes: usize = plan.batches.iter().map(Vec::len).sum();
    println!(
        "plan: {} {} to {nodes} node(s) in {} batch(es), at most {} at a time, at least {} serving",
        r.app,
        r.version,
        plan.batches.len(),
        opts.max_parallel,
        opts.min_healthy
    );
    for (i, batch) in plan.batches.iter().enumerate() {
        let names: Vec<String> = batch
            .iter()
            .map(|t| format!("{} ({})", t.node, t.previous.as_deref().unwrap_or("new")))
            .collect();
        println!("  batch {}: {}", i + 1, names.join(", "));
    }
    if !plan.current.is_empty() {
        println!("  already on {}: {}", r.version, plan.current.join(", "));
    }
    for (node, why) in &plan.unreachable {
        println!("  unreachable: {node}: {why}");
    }
}

/// Runs a plan batch by batch; on too many failures, halts and reverts the nodes it updated.
pub async fn run(serf: &Serf, step: &Step, plan: Plan, opts: &Options, out: &Progress) -> Report {
    let r = &step.release;
    let mut report = Report {
        current: plan.current.clone(),
        unreachable: plan.unreachable.clone(),
        ..Report::default()
    };
    let mut updated: Vec<Target> = Vec::new();
    // Names this run in its queries, so that repeated copies start nothing twice on a node.
    let run_id = format!("{:016x}", rand::random::<u64>());
    // Nodes known to serve the app right now, kept up to date as nodes go out and come back.
    let mut serving = plan.serving;
    let total = plan.batches.len();
    for (i, batch) in plan.batches.into_iter().enumerate() {
        let out_of_service = batch.iter().filter(|t| t.serving).count();
        if out_of_service > 0 && serving.saturating_sub(out_of_service) < opts.min_healthy {
            report.halted = Some(format!(
                "only {serving} node(s) serve {}: batch {} would leave fewer than --min-healthy {}",
                r.app,
                i + 1,
                opts.min_healthy
            ));
            break;
        }
        let names: Vec<&str> = batch.iter().map(|t| t.node.as_str()).collect();
        out.say(&format!(
            "batch {}/{total}: deploying {} {} to {}",
            i + 1,
            r.app,
            r.version,
            names.join(", ")
        ));
        let outcome = deploy_batch(serf, step, &run_id, &batch, opts, out).await;
        for target in batch {
            match outcome.get(&target.node) {
                Some(NodeEnd::Serving) => {
                    serving += usize::from(!target.serving);
                    report.updated.push(target.node.clone());
                    updated.push(target);
                }
                Some(NodeEnd::Failed(why)) | Some(NodeEnd::Refused(why)) => {
                    report.failed.push((target.node.clone(), why.clone()));
                }
                Some(NodeEnd::Unreachable(why)) => {
                    serving -= usize::from(target.serving);
                    report.unreachable.push((target.node.clone(), why.clone()));
                }
                None => {}
            }
        }
        if report.failed.len() > opts.max_failures {
            report.halted = Some(format!(
                "{} node(s) failed (more than --max-failures {})",
                report.failed.len(),
                opts.max_failures
            ));
            break;
        }
    }
    if report.halted.is_some() && !updated.is_empty() {
        out.say(&format!(
            "halted: reverting {} node(s) to their previous {}",
            updated.len(),
            r.app
        ));
        report.reverted = revert(serf, step, &run_id, &updated, opts, out).await;
    }
    report
}

/// Pause before asking a busy node again.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(300);

#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeEnd {
    Serving,
    Failed(String),
    Unreachable(String),
    Refused(String),
}

/// Sends the deploy to a batch and follows each node until it serves, fails or goes silent.
async fn deploy_batch(
    serf: &Serf,
    step: &Step,
    run_id: &str,
    batch: &[Target],
    opts: &Options,
    out: &Progress,
) -> BTreeMap<String, NodeEnd> {
    let r = &step.release;
    let nodes: Vec<String> = batch.iter().map(|t| t.node.clone()).collect();
    let mut ends = BTreeMap::new();
    let mut pending = Vec::new();
    // A node still finishing its previous run (its worker publishing tags after the app went
    // live) answers "busy": ask it again until the per-node deadline instead of failing it.
    let busy_deadline = tokio::time::Instant::now() + opts.node_timeout;
    let mut asking = nodes.clone();
    while !asking.is_empty() {
        let acks = gather(
            serf,
            wire::QUERY_DEPLOY,
            &wire::with_run(&step.url, run_id),
            &asking,
            opts,
            opts.unreachable_after,
            out,
        )
        .await;
        let mut busy = Vec::new();
        for node in &asking {
            match acks.get(node).map(|text| serde_json::from_str::<Ack>(text)) {
                Some(Ok(ack)) if ack.ok => pending.push(node.clone()),
                Some(Ok(ack)) if ack.is_busy() && tokio::time::Instant::now() < busy_deadline => {
                    busy.push(node.clone());
                }
                Some(Ok(ack)) => {
                    out.say(&format!("{node}: refused the deploy: {}", ack.msg));
                    ends.insert(node.clone(), NodeEnd::Refused(ack.msg));
                }
                Some(Err(_)) => {
                    out.say(&format!(
                        "{node}: answered the deploy query with something not cutover's"
                    ));
                    ends.insert(
                        node.clone(),
                        NodeEnd::Refused("unreadable answer".to_owned()),
                    );
                }
                None => {
                    out.say(&format!(
                        "{node}: UNREACHABLE: no answer to the deploy query"
                    ));
                    ends.insert(
                        node.clone(),
                        NodeEnd::Unreachable("no answer to the deploy query".to_owned()),
                    );
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
    let version = r.version.clone();
    let app = r.app.clone();
    let settled = follow(serf, &pending, opts, out, move |_, state| {
        if let Some(a) = state.app(&app).filter(|a| a.serves(&version)) {
            return Some(Ok(format!(
                "serves {} {} ({}/{} healthy)",
                app, version, a.ok, a.of
            )));
        }
        // The handler put this run on record when it accepted the deploy, so a failed deploy on
        // record is ours; an unnamed one failed before the node could read the manifest.
        let last = state.last.as_ref()?;
        let ours =
            last.op == "deploy" && (last.app.is_empty() || (last.app == app && last.v == version));
        (ours && last.s == RunState::Failed).then(|| Err(last.m.clone()))
    })
    .await;
    ends.extend(settled);
    ends
}

/// Polls the status of `nodes` until `settled` decides each one, or its deadlines pass.
/// `settled` returns `Some(Ok(msg))` for success, `Some(Err(why))` for failure, `None` to wait.
///
/// A new query goes out every `poll` even while earlier ones are still open (up to
/// `serf::QUERIES_IN_FLIGHT`): gossip on a busy host loses a message now and then, and one lost query
/// or answer must cost a poll interval, not a whole query timeout.
async fn follow(
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
                if queries.len() < super::serf::QUERIES_IN_FLIGHT {
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

/// Rolls every updated node back to the version it ran before, and waits until it serves it.
async fn revert(
    serf: &Serf,
    step: &Step,
    run_id: &str,
    nodes: &[Target],
    opts: &Options,
    out: &Progress,
) -> Vec<String> {
    let app = step.release.app.clone();
    let mut asked = Vec::new();
    for target in nodes {
        let Some(previous) = &target.previous else {
            out.say(&format!(
                "{}: ran no {app} before: left on {}",
                target.node, step.release.version
            ));
            continue;
        };
        let payload = wire::with_run(&format!("{app} {previous}"), run_id);
        let node = std::slice::from_ref(&target.node);
        let answer = gather(
            serf,
            wire::QUERY_ROLLBACK,
            &payload,
            node,
            opts,
            opts.unreachable_after,
            out,
        )
        .await
        .remove(&target.node)
        .and_then(|text| serde_json::from_str::<Ack>(&text).ok());
        match answer {
            Some(ack) if ack.ok => asked.push(target.clone()),
            Some(ack) => out.say(&format!(
                "{}: refused the rollback: {}",
                target.node, ack.msg
            )),
            None => out.say(&format!(
                "{}: UNREACHABLE: no answer to the rollback query",
                target.node
            )),
        }
    }
    let previous: BTreeMap<String, String> = asked
        .iter()
        .filter_map(|t| Some((t.node.clone(), t.previous.clone()?)))
        .collect();
    let names: Vec<String> = asked.iter().map(|t| t.node.clone()).collect();
    let ends = follow(serf, &names, opts, out, |node, state| {
        let a = state.app(&app)?;
        if previous.get(node).is_some_and(|v| a.serves(v)) {
            return Some(Ok(format!(
                "reverted: serves {} {}",
                app,
                a.v.as_deref().unwrap_or("?")
            )));
        }
        let last = state.last.as_ref()?;
        (last.op == "rollback" && last.app == app && last.s == RunState::Failed)
            .then(|| Err(last.m.clone()))
    })
    .await;
    ends.into_iter()
        .filter(|(_, end)| *end == NodeEnd::Serving)
        .map(|(node, _)| node)
        .collect()
}

/// `Serf::gather` with the rollout's query timeout, reporting the first failed query.
async fn gather(
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
async fn status_of(
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

fn describe(filters: &[String]) -> String {
    if filters.is_empty() {
        "the cluster".to_owned()
    } else {
        format!("tags {}", filters.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(max_parallel: usize, min_healthy: usize) -> Options {
        Options {
            tags: Vec::new(),
            max_parallel,
            min_healthy,
            max_failures: 0,
            node_timeout: Duration::from_secs(60),
            unreachable_after: Duration::from_secs(10),
            query_timeout: Duration::from_secs(2),
            poll: Duration::from_millis(200),
        }
    }

    fn targets(n: usize) -> Vec<Target> {
        (1..=n)
            .map(|i| Target {
                node: format!("n{i}"),
                previous: Some("1".to_owned()),
                serving: true,
            })
            .collect()
    }

    fn sizes(batches: &[Vec<Target>]) -> Vec<usize> {
        batches.iter().map(Vec::len).collect()
    }

    #[test]
    fn batches_are_max_parallel_wide_in_member_order() {
        let b = batches(targets(5), 5, &opts(2, 0)).unwrap();
        assert_eq!(sizes(&b), [2, 2, 1]);
        assert_eq!(b[0][0].node, "n1");
        assert_eq!(
            sizes(&batches(targets(3), 3, &opts(1, 0)).unwrap()),
            [1, 1, 1]
        );
    }

    #[test]
    fn min_healthy_narrows_batches() {
        assert_eq!(
            sizes(&batches(targets(5), 5, &opts(3, 4)).unwrap()),
            [1, 1, 1, 1, 1]
        );
        assert_eq!(sizes(&batches(targets(5), 5, &opts(3, 2)).unwrap()), [3, 2]);
    }

    #[test]
    fn no_room_when_min_healthy_takes_every_serving_node() {
        assert!(batches(targets(2), 2, &opts(1, 2)).is_none());
        // Nodes that serve nothing can always go: they cost no capacity.
        let fresh: Vec<Target> = targets(2)
            .into_iter()
            .map(|t| Target {
                serving: false,
                ..t
            })
            .collect();
        assert_eq!(
            sizes(&batches(fresh.clone(), 0, &opts(1, 2)).unwrap()),
            [1, 1]
        );
        assert_eq!(sizes(&batches(fresh, 0, &opts(2, 2)).unwrap()), [2]);
    }
}
