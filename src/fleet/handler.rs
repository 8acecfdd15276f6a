//! `cutover serf-handler`: what a node does when its Serf agent hands it an event or a query.
//!
//! Install it as the agent's handler for everything, or for queries only:
//!
//! ```text
//! serf agent -event-handler "cutover serf-handler"             # queries, deploy events, joins
//! serf agent -event-handler "query:cutover=cutover serf-handler"
//! ```
//!
//! Serf runs handlers one at a time and sends a query handler's stdout back as its answer, so a
//! query is answered at once: deploys, stages and rollbacks are started as detached workers
//! (their own process group, output to `STATE/fleet/fleet.log`) and followed by status queries.

use std::io::Read;
use std::process::{ExitCode, Stdio};

use super::node::Node;
use super::serf::Serf;
use super::wire::{self, Ack, LastRun, RunState};
use super::worker;

/// The Serf event name that carries a manifest URL in event mode (`serf event deploy URL`).
pub const DEPLOY_EVENT: &str = "deploy";

/// Handles the event or query described by the `SERF_*` environment and stdin.
pub async fn run(node: &Node, serf: &Serf) -> ExitCode {
    let event = std::env::var("SERF_EVENT").unwrap_or_default();
    let mut payload = String::new();
    // Serf closes stdin after the payload; a read error is an empty payload, answered as such.
    let _ = std::io::stdin().read_to_string(&mut payload);
    match event.as_str() {
        "query" => {
            let name = std::env::var("SERF_QUERY_NAME").unwrap_or_default();
            if let Some(answer) = answer_query(node, &name, payload.trim()).await {
                // No trailing newline: the answer is exactly what the coordinator parses.
                print!("{answer}");
            }
            ExitCode::SUCCESS
        }
        "user" if std::env::var("SERF_USER_EVENT").as_deref() == Ok(DEPLOY_EVENT) => {
            worker::event_deploy(node, serf, &payload).await
        }
        "member-join" => {
            let me = std::env::var("SERF_SELF_NAME").unwrap_or_default();
            let joined_self = payload
                .lines()
                .any(|l| l.split('\t').next() == Some(me.as_str()));
            if joined_self {
                node.log(&format!("{me} joined: looking for versions to catch up on"));
                if let Err(err) = spawn_detached(node, &["serf-handler", "--catch-up"]) {
                    node.log(&format!("could not start catching up: {err}"));
                }
            }
            ExitCode::SUCCESS
        }
        // Other events (leave, fail, update, other user events) are not cutover's business.
        _ => ExitCode::SUCCESS,
    }
}

/// The answer to query `name`, or `None` for queries that belong to someone else (Serf then
/// sends no response from this node, exactly as if cutover were not installed).
pub async fn answer_query(node: &Node, name: &str, payload: &str) -> Option<String> {
    let answer = match name {
        wire::QUERY_STATUS => return Some(wire::state_json(&node.state().await)),
        wire::QUERY_DEPLOY => start(node, "deploy", payload),
        wire::QUERY_STAGE => start(node, "stage", payload),
        wire::QUERY_ROLLBACK => start(node, "rollback", payload),
        wire::QUERY_MANIFEST => manifest_of(node, payload),
        _ => return None,
    };
    Some(wire::ack_json(&answer))
}

/// Records the run as started and spawns its worker; the coordinator follows it by status.
fn start(node: &Node, op: &str, payload: &str) -> Ack {
    let (payload, run_id) = wire::split_run(payload);
    if payload.is_empty() {
        return Ack::refused(format!(
            "empty {op} payload: send a manifest URL or APP [VERSION]"
        ));
    }
    let run = format!("{op} {payload}");
    // Another copy of a query this node already took: the coordinator sends again while an
    // answer is late, and the work must start once, even if it has finished since.
    let taken = run_id.map(|id| format!("{run} {}{id}", wire::RUN_PREFIX));
    let record = node.record();
    if taken.is_some() && record.accepted == taken {
        return Ack::accepted();
    }
    if worker::busy(node) {
        if record.running.as_deref() == Some(run.as_str()) {
            return Ack::accepted();
        }
        let last = record.last;
        let what = last.map_or_else(String::new, |l| format!(": {} {} {}", l.op, l.app, l.v));
        return Ack::refused(format!("busy{what}; retry when it ends"));
    }
    // "running" is on record before the worker exists, so a status query that races the worker's
    // start cannot mistake the old version for the outcome of this run.
    let (app, version) = match op {
        "rollback" => {
            let mut words = payload.split_whitespace();
            let app = words.next().unwrap_or_default().to_owned();
            (app, words.next().unwrap_or("previous").to_owned())
        }
        _ => (String::new(), String::new()),
    };
    let marked = node.update_record(|r| {
        r.running = Some(run);
        r.accepted = taken;
        r.last = Some(LastRun {
            op: op.to_owned(),
            app,
            v: version,
            s: RunState::Running,
            m: format!("started for {payload}"),
        })
    });
    if let Err(err) = marked {
        return Ack::refused(err.to_string());
    }
    let flag = format!("--run-{op}");
    match spawn_detached(node, &["serf-handler", &flag, &payload]) {
        Ok(()) => Ack::accepted(),
        Err(err) => Ack::refused(format!("could not start the {op} worker: {err}")),
    }
}

/// Payload `APP VERSION`: the manifest URL this node deployed that version of the app from.
fn manifest_of(node: &Node, payload: &str) -> Ack {
    let mut words = payload.split_whitespace();
    let (app, version) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    match node
        .record()
        .manifests
        .get(app)
        .and_then(|v| v.get(version))
    {
        Some(url) => Ack {
            ok: true,
            msg: "known".to_owned(),
            url: Some(url.clone()),
            v: Some(version.to_owned()),
        },
        None => Ack::refused(format!(
            "no manifest of {app} {version} recorded on this node"
        )),
    }
}

/// Starts `cutover ARGS…` in its own process group with output to the fleet log, and does not
/// wait: the Serf handler must return, and the worker must survive it.
pub fn spawn_detached(node: &Node, args: &[&str]) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;

    let log = super::node::open_log(&node.log_path())?;
    let log2 = log.try_clone()?;
    // Serf waits for the handler's stdout to close: the worker must not inherit it.
    std::process::Command::new(&node.exe)
        .args(args)
        .arg("--state-dir")
        .arg(&node.state_dir)
        .arg("--socket")
        .arg(&node.socket)
        .args(node.trust_args())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map(drop)
}
