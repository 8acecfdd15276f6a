//! Fleet status: every member, the versions it publishes as tags, its live health from a status
//! query, and the release it staged for a rollout's switch (`staged VERSION` in the phase). No
//! store of its own: Serf's membership and tags, and the nodes' answers, are the record.

use std::collections::BTreeMap;
use std::time::Duration;

use super::serf::{Serf, SerfError};
use super::tags;
use super::wire::{self, LastRun, NodeState, RunState};

/// One row of the fleet table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub node: String,
    pub status: String,
    pub app: String,
    pub version: String,
    pub health: String,
    pub phase: String,
    /// A version staged on the node and not live yet (`cutover rollout` switches to it next).
    pub staged: Option<String>,
}

/// Reads members, their tags and their answers to a status query (within `timeout`; an error
/// only when no node answered and a query failed).
pub async fn collect(
    serf: &Serf,
    filters: &[String],
    timeout: Duration,
) -> Result<Vec<Row>, SerfError> {
    let members = serf.members(filters).await?;
    let alive: Vec<String> = members
        .iter()
        .filter(|m| m.is_alive())
        .map(|m| m.name.clone())
        .collect();
    let states: BTreeMap<String, NodeState> = if alive.is_empty() {
        BTreeMap::new()
    } else {
        // Resent while answers are missing, as the rollout's queries are: a lost copy of the
        // query must not show a live node as "no answer".
        let (answers, failure) = serf
            .gather(wire::QUERY_STATUS, "", &alive, timeout, timeout)
            .await;
        if let (true, Some(err)) = (answers.is_empty(), failure) {
            return Err(err);
        }
        answers
            .into_iter()
            .filter_map(|(n, text)| Some((n, serde_json::from_str(&text).ok()?)))
            .collect()
    };
    let mut rows = Vec::new();
    for member in &members {
        let state = states.get(&member.name);
        let mut apps = tags::versions(member);
        // Apps the node runs but has not published yet still show, from its own answer.
        for app in state.map(|s| s.apps.as_slice()).unwrap_or_default() {
            if let Some(v) = &app.v {
                apps.entry(app.n.clone()).or_insert_with(|| v.clone());
            }
        }
        let stage = state
            .and_then(|s| s.last.as_ref())
            .filter(|l| l.op == "stage");
        // A node that runs nothing of the app yet still shows what it staged of it.
        if let Some(last) = stage.filter(|l| !l.app.is_empty()) {
            apps.entry(last.app.clone())
                .or_insert_with(|| "-".to_owned());
        }
        let row = |app: &str, version: &str, health: String, phase: String| {
            let staging = stage.filter(|l| l.app == app && l.v != version);
            Row {
                node: member.name.clone(),
                status: member.status.clone(),
                app: app.to_owned(),
                version: version.to_owned(),
                health,
                phase: staging.map_or(phase.clone(), |l| with_stage(&phase, l)),
                staged: staging.filter(|l| l.s == RunState::Ok).map(|l| l.v.clone()),
            }
        };
        if apps.is_empty() {
            let note = match state {
                Some(s) => s.err.clone().unwrap_or_else(|| "no apps".to_owned()),
                None => "no answer".to_owned(),
            };
            rows.push(row("-", "-", "-".to_owned(), note));
        }
        for (app, version) in apps {
            let (health, phase) = match state.map(|s| (s, s.app(&app))) {
                Some((_, Some(a))) => (format!("{}/{}", a.ok, a.of), a.p.clone()),
                Some((s, None)) => (
                    "-".to_owned(),
                    s.err.clone().unwrap_or_else(|| "not running".to_owned()),
                ),
                None => ("?".to_owned(), "no answer".to_owned()),
            };
            rows.push(row(&app, &version, health, phase));
        }
    }
    Ok(rows)
}

/// The phase with the node's staging of another version: `staged 2` (or `staging 2`,
/// `stage of 2 failed: …`), after the supervisor's phase unless that is plain `idle`.
fn with_stage(phase: &str, last: &LastRun) -> String {
    let stage = match last.s {
        RunState::Running => format!("staging {}", last.v),
        RunState::Ok => format!("staged {}", last.v),
        RunState::Failed => format!("stage of {} failed: {}", last.v, last.m),
    };
    match phase {
        "idle" | "not running" | "no answer" => stage,
        other => format!("{other}; {stage}"),
    }
}

/// The rows as an aligned table.
pub fn render(rows: &[Row]) -> String {
    let header = Row {
        node: "NODE".to_owned(),
        status: "STATUS".to_owned(),
        app: "APP".to_owned(),
        version: "VERSION".to_owned(),
        health: "HEALTHY".to_owned(),
        phase: "PHASE".to_owned(),
        staged: None,
    };
    let all: Vec<&Row> = std::iter::once(&header).chain(rows).collect();
    let width = |f: fn(&Row) -> &str| all.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
    let w = [
        width(|r| &r.node),
        width(|r| &r.status),
        width(|r| &r.app),
        width(|r| &r.version),
        width(|r| &r.health),
    ];
    let mut out = String::new();
    for r in all {
        out.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {}\n",
            r.node,
            r.status,
            r.app,
            r.version,
            r.health,
            r.phase,
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4],
        ));
    }
    out
}

/// The table's rows as JSON objects with the table's column names (only protocol and store
/// types derive Serialize; this is the CLI's own shape).
pub fn rows_json(rows: &[Row]) -> serde_json::Value {
    rows.iter()
        .map(|row| {
            serde_json::json!({
                "node": row.node,
                "status": row.status,
                "app": row.app,
                "version": row.version,
                "health": row.health,
                "phase": row.phase,
                "staged": row.staged,
            })
        })
        .collect()
}
