//! Planning a rollout: which members it touches, which already serve the version, and the
//! batches the rest go out in, cut so that `min_healthy` nodes keep serving; changes nothing.

use super::ask::status_of;
use super::inputs::{Options, Step};
use super::outcome::Progress;
use crate::fleet::serf::{Serf, SerfError};

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

/// A plan the way `--dry-run` shows it, one line per batch.
pub fn plan_text(step: &Step, plan: &Plan, opts: &Options) -> String {
    use std::fmt::Write as _;
    let r = &step.release;
    let nodes: usize = plan.batches.iter().map(Vec::len).sum();
    let mut out = format!(
        "plan: {} {} to {nodes} node(s) in {} batch(es), at most {} at a time, at least {} serving\n",
        r.app,
        r.version,
        plan.batches.len(),
        opts.max_parallel,
        opts.min_healthy
    );
    if nodes > 0 {
        let _ = writeln!(
            out,
            "  staged first on all {nodes}, switched only if at most {} fail and at least {} hold it",
            opts.max_failures, opts.min_staged
        );
    }
    for (i, batch) in plan.batches.iter().enumerate() {
        let names: Vec<String> = batch
            .iter()
            .map(|t| format!("{} ({})", t.node, t.previous.as_deref().unwrap_or("new")))
            .collect();
        let _ = writeln!(out, "  batch {}: {}", i + 1, names.join(", "));
    }
    if !plan.current.is_empty() {
        let _ = writeln!(
            out,
            "  already on {}: {}",
            r.version,
            plan.current.join(", ")
        );
    }
    for (node, why) in &plan.unreachable {
        let _ = writeln!(out, "  unreachable: {node}: {why}");
    }
    out
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
    use std::time::Duration;

    use super::*;

    fn opts(max_parallel: usize, min_healthy: usize) -> Options {
        Options {
            tags: Vec::new(),
            max_parallel,
            min_healthy,
            max_failures: 0,
            min_staged: 0,
            stage_only: false,
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
