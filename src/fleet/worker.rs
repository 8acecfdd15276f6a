//! The work a node's handler starts and does not wait for: a deploy, a stage, a rollback, an
//! event-mode deploy; each but the stage ends by publishing what the node now runs as Serf tags.
//!
//! One worker at a time per node, held by an exclusive `flock` on `STATE/fleet/worker.lock`: the
//! supervisor would refuse a second rollout of an app anyway, and one clear "busy" is better.

use std::fs::File;
use std::process::{ExitCode, Stdio};

use nix::fcntl::{Flock, FlockArg};

use super::manifest;
use super::node::Node;
use super::serf::Serf;
use super::tags;
use super::wire::{LastRun, RunState};
use crate::agent::trust::EXIT_UNTRUSTED;

/// Whether a worker holds this node's lock right now.
pub fn busy(node: &Node) -> bool {
    lock(node).is_none()
}

fn lock(node: &Node) -> Option<Flock<File>> {
    std::fs::create_dir_all(node.fleet_dir()).ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(node.fleet_dir().join("worker.lock"))
        .ok()?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()
}

/// `cutover serf-handler --run-deploy URL`: `cutover apply URL`, then record and publish.
pub async fn deploy(node: &Node, serf: &Serf, url: &str) -> ExitCode {
    let code = apply(node, Apply::Deploy, url).await;
    publish(node, serf).await;
    code
}

/// `cutover serf-handler --run-stage URL`: `cutover apply --stage-only URL`, then record. The
/// node still runs what it ran, so there is nothing new to publish.
pub async fn stage(node: &Node, url: &str) -> ExitCode {
    apply(node, Apply::Stage, url).await
}

/// What a worker asks of `cutover apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Apply {
    Deploy,
    Stage,
}

impl Apply {
    /// The run's name on record and in the coordinator's queries.
    fn op(self) -> &'static str {
        match self {
            Apply::Deploy => "deploy",
            Apply::Stage => "stage",
        }
    }
}

/// Runs `cutover apply [--stage-only] URL` under the worker lock and records how it ended.
async fn apply(node: &Node, what: Apply, url: &str) -> ExitCode {
    let op = what.op();
    let Some(_lock) = lock(node) else {
        node.log(&format!(
            "not running {op} of {url}: another fleet run holds the lock"
        ));
        return ExitCode::FAILURE;
    };
    let release = match manifest::read(url).await {
        Ok(release) => release,
        Err(err) => {
            // No app name to put on record: the coordinator takes an unnamed failure as its own.
            finish(node, op, "", "", RunState::Failed, &err.to_string());
            return ExitCode::FAILURE;
        }
    };
    let (app, version) = (release.app.as_str(), release.version.as_str());
    let args: &[&str] = match what {
        Apply::Deploy => &["apply", url],
        Apply::Stage => &["apply", "--stage-only", url],
    };
    let command = format!("cutover {}", args.join(" "));
    finish(node, op, app, version, RunState::Running, &command);
    match what {
        Apply::Deploy => node.log(&format!("deploying {app} {version} from {url}")),
        Apply::Stage => node.log(&format!("staging {app} {version} from {url}")),
    }
    // Where this run's lines begin in the fleet log, to find the agent's reason on failure.
    let log_start = std::fs::metadata(node.log_path()).map_or(0, |m| m.len());
    match node.run_logged(args).await {
        Ok(status) if status.success() => {
            if what == Apply::Deploy {
                let _ = node.update_record(|r| {
                    r.manifests
                        .entry(app.to_owned())
                        .or_default()
                        .insert(version.to_owned(), url.to_owned());
                });
            }
            let done = match what {
                Apply::Deploy => "deployed",
                Apply::Stage => "staged",
            };
            finish(node, op, app, version, RunState::Ok, done);
            ExitCode::SUCCESS
        }
        Ok(status) => {
            let code = status.code().unwrap_or(-1);
            let refused = if code == i32::from(EXIT_UNTRUSTED) {
                " (the manifest is not trusted)"
            } else {
                ""
            };
            let reason = agent_reason(node, log_start)
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            let why = format!(
                "{command} exited with {code}{refused}{reason}; details in {}",
                node.log_path().display()
            );
            finish(node, op, app, version, RunState::Failed, &why);
            ExitCode::FAILURE
        }
        Err(err) => {
            finish(node, op, app, version, RunState::Failed, &err.to_string());
            ExitCode::FAILURE
        }
    }
}

/// The agent's own reason for a failed run, from its final line ("Deploy manifest failed: URL:
/// REASON", or "Stage …") among what it appended to the fleet log after `from`, so that the
/// coordinator shows why, not only an exit code.
fn agent_reason(node: &Node, from: u64) -> Option<String> {
    let bytes = std::fs::read(node.log_path()).ok()?;
    let tail = String::from_utf8_lossy(bytes.get(usize::try_from(from).ok()?..)?).into_owned();
    let (_, after) = tail
        .lines()
        .rev()
        .find_map(|line| line.split_once(" manifest failed: "))?;
    // `after` is "URL: REASON"; a URL holds ':' but never ": ".
    let reason = after.split_once(": ").map_or(after, |(_, reason)| reason);
    Some(reason.trim().to_owned())
}

/// `cutover serf-handler --run-rollback "APP [VERSION]"`: `cutover rollback`, record, publish.
pub async fn rollback(node: &Node, serf: &Serf, payload: &str) -> ExitCode {
    let Some(_lock) = lock(node) else {
        node.log(&format!(
            "not rolling back {payload}: another fleet run holds the lock"
        ));
        return ExitCode::FAILURE;
    };
    let words: Vec<&str> = payload.split_whitespace().collect();
    let app = words.first().copied().unwrap_or_default();
    let target = words.get(1).copied().unwrap_or("previous");
    node.log(&format!("rolling {app} back to {target}"));
    let mut args = vec!["rollback", app];
    args.extend(words.get(1));
    let code = match node.run_logged(&args).await {
        Ok(status) if status.success() => {
            finish(node, "rollback", app, target, RunState::Ok, "rolled back");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            let why = format!(
                "cutover rollback {app} exited with {}; details in {}",
                status.code().unwrap_or(-1),
                node.log_path().display()
            );
            finish(node, "rollback", app, target, RunState::Failed, &why);
            ExitCode::FAILURE
        }
        Err(err) => {
            finish(
                node,
                "rollback",
                app,
                target,
                RunState::Failed,
                &err.to_string(),
            );
            ExitCode::FAILURE
        }
    };
    publish(node, serf).await;
    code
}

/// A `deploy` user event, as stretcher users send it: the agent itself reads the payload (so its
/// replay protection and input parsing apply unchanged), then the node publishes its versions.
pub async fn event_deploy(node: &Node, serf: &Serf, payload: &str) -> ExitCode {
    use tokio::io::AsyncWriteExt;

    let ltime = std::env::var("SERF_USER_LTIME").unwrap_or_default();
    node.log(&format!("deploy event (ltime {ltime}): {}", payload.trim()));
    // Serf runs handlers one at a time, so this blocks later events exactly as stretcher did.
    let mut cmd = node.command(&[]);
    cmd.stdin(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(err) => {
            node.log(&format!(
                "could not run the agent for a deploy event: {err}"
            ));
            return ExitCode::FAILURE;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(payload.as_bytes()).await;
    }
    let status = child.wait().await;
    let ok = status.as_ref().is_ok_and(|s| s.success());
    if let Ok(code) = status.as_ref().map(|s| s.code().unwrap_or(-1)) {
        if code == i32::from(EXIT_UNTRUSTED) {
            node.log("deploy event refused: the manifest is not trusted (see the agent's output in the serf agent's log)");
        } else if code != 0 {
            node.log(&format!(
                "deploy event failed: the agent exited with {code}"
            ));
        }
    }
    let url = payload.lines().map(str::trim).find(|l| !l.is_empty());
    if let (true, Some(url)) = (ok, url) {
        // A plain file drop has no app to record; that is fine in event mode.
        if let Ok(release) = manifest::read(url).await {
            let _ = node.update_record(|r| {
                r.manifests
                    .entry(release.app.clone())
                    .or_default()
                    .insert(release.version.clone(), url.to_owned());
            });
        }
    }
    publish(node, serf).await;
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Publishes every live app version of this node as a `cutover.APP=VERSION` tag.
pub async fn publish(node: &Node, serf: &Serf) {
    let report = match node.status().await {
        Ok(report) => report,
        Err(err) => {
            node.log(&format!("not publishing tags: {err}"));
            return;
        }
    };
    let pairs: Vec<(String, String)> = report
        .apps
        .iter()
        .filter_map(|a| Some((tags::key(&a.name), a.live_version.clone()?)))
        .collect();
    match serf.set_tags(&pairs).await {
        Ok(()) if !pairs.is_empty() => {
            let shown: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            node.log(&format!("published {}", shown.join(" ")));
        }
        Ok(()) => {}
        Err(err) => node.log(&format!("could not publish tags: {err}")),
    }
}

fn finish(node: &Node, op: &str, app: &str, version: &str, state: RunState, message: &str) {
    if state != RunState::Running {
        node.log(&format!("{op} {app} {version}: {message}"));
    }
    let last = LastRun {
        op: op.to_owned(),
        app: app.to_owned(),
        v: version.to_owned(),
        s: state,
        m: message.to_owned(),
    };
    let done = state != RunState::Running;
    let recorded = node.update_record(|r| {
        r.last = Some(last);
        if done {
            r.running = None;
        }
    });
    if let Err(err) = recorded {
        node.log(&err.to_string());
    }
}
