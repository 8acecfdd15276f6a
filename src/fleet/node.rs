//! This node as the fleet sees it: the local cutover verbs the handler runs (`apply`,
//! `rollback`), the supervisor's status, and the handler's small record under `STATE/fleet/`.
//!
//! Deploys and rollbacks go through the real `cutover` binary rather than the socket: they must
//! outlive the Serf handler that started them, and a child process is what does. A status is
//! asked over the control socket directly: it is answered inside a Serf query.
//! The record keeps what peers and coordinators ask for and the supervisor does not know: the
//! manifest URL each app last came from, and how the last fleet-started run ended.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::wire::{AppState, LastRun, NodeState};
use crate::protocol::client::Client;
use crate::protocol::{Request, Response, StatusReport, StatusRequest};

/// A status read from the supervisor must be quick: it is answered inside a Serf query.
const STATUS_DEADLINE: Duration = Duration::from_secs(4);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("could not run {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} did not finish within {deadline:?}: is the supervisor stuck?")]
    Timeout { what: String, deadline: Duration },
    #[error("{what} failed: {message}")]
    Failed { what: String, message: String },
    #[error("could not write the fleet record {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How to run this node's own cutover verbs: the binary, and the state dir, socket and trusted
/// keys to pass on.
#[derive(Debug, Clone)]
pub struct Node {
    pub exe: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// `--trust FILE` when the handler was given one: its deploys must check the same keys.
    pub trust: Option<PathBuf>,
}

impl Node {
    pub fn fleet_dir(&self) -> PathBuf {
        self.state_dir.join("fleet")
    }

    /// Where detached workers write their lines (the node's fleet log).
    pub fn log_path(&self) -> PathBuf {
        self.fleet_dir().join("fleet.log")
    }

    /// A `cutover VERB …` command that reaches this node's supervisor.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .args(self.trust_args())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// `--trust FILE`, when set, for every cutover this node runs.
    pub fn trust_args(&self) -> Vec<&std::ffi::OsStr> {
        match &self.trust {
            Some(path) => vec!["--trust".as_ref(), path.as_os_str()],
            None => Vec::new(),
        }
    }

    /// The supervisor's report, asked over its control socket from this process: a status
    /// answer is on the critical path of every poll of a rollout, and a child process would
    /// only add its start-up time.
    pub async fn status(&self) -> Result<StatusReport, NodeError> {
        let what = "the supervisor's status".to_owned();
        let ask = async {
            let client = Client::connect(&self.socket).await?;
            client
                .request(&Request::Status(StatusRequest { app: None }), |_| {})
                .await
        };
        let answer = tokio::time::timeout(STATUS_DEADLINE, ask)
            .await
            .map_err(|_| NodeError::Timeout {
                what: what.clone(),
                deadline: STATUS_DEADLINE,
            })?;
        match answer {
            Ok(Response::Status(report)) => Ok(report),
            Ok(Response::Error(err)) => Err(NodeError::Failed {
                what,
                message: err.message,
            }),
            Ok(other) => Err(NodeError::Failed {
                what,
                message: format!("unexpected answer {other:?}"),
            }),
            Err(err) => Err(NodeError::Failed {
                what,
                message: err.to_string(),
            }),
        }
    }

    /// What this node answers to a status query: the supervisor's view plus the handler's record.
    pub async fn state(&self) -> NodeState {
        let last = self.record().last;
        match self.status().await {
            Ok(report) => NodeState {
                apps: summarize(&report),
                last,
                err: None,
                more: 0,
            },
            Err(err) => NodeState {
                apps: Vec::new(),
                last,
                err: Some(err.to_string()),
                more: 0,
            },
        }
    }

    /// Runs a verb to completion with its output appended to the fleet log.
    pub async fn run_logged(&self, args: &[&str]) -> Result<ExitStatus, NodeError> {
        let what = format!("`cutover {}`", args.join(" "));
        let log = open_log(&self.log_path()).map_err(|source| NodeError::Record {
            path: self.log_path(),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| NodeError::Record {
            path: self.log_path(),
            source,
        })?;
        let mut cmd = self.command(args);
        cmd.stdout(log).stderr(log2);
        let mut child = cmd
            .spawn()
            .map_err(|source| NodeError::Spawn { what, source })?;
        // No deadline of our own here: apply and rollback end on the manifest's and the
        // supervisor's deadlines, and a coordinator waiting on us has its own.
        child.wait().await.map_err(|source| NodeError::Spawn {
            what: "a cutover child".to_owned(),
            source,
        })
    }

    pub fn record(&self) -> Record {
        std::fs::read(self.fleet_dir().join("node.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Changes the record and writes it back atomically (temp file, fsync, rename).
    pub fn update_record(&self, change: impl FnOnce(&mut Record)) -> Result<(), NodeError> {
        let mut record = self.record();
        change(&mut record);
        let dir = self.fleet_dir();
        let path = dir.join("node.json");
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
            serde_json::to_writer(&mut tmp, &record)?;
            tmp.as_file().sync_all()?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(|source| NodeError::Record { path, source })
    }

    /// Appends one timestamped line to the fleet log; if that fails, to stderr, which Serf logs.
    pub fn log(&self, line: &str) {
        let stamped = format!(
            "{} {line}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
        let written = open_log(&self.log_path()).and_then(|mut file| writeln!(file, "{stamped}"));
        if written.is_err() {
            eprintln!("{stamped}");
        }
    }
}

/// What the handler remembers between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub last: Option<LastRun>,
    /// `OP PAYLOAD` of the run a worker was started for, so a repeated query (its first answer
    /// lost on the way) is answered "accepted" again instead of "busy".
    #[serde(default)]
    pub running: Option<String>,
    /// `OP PAYLOAD run=ID` of the last run a coordinator started here, so that late copies of
    /// its query do not start it again after it ended.
    #[serde(default)]
    pub accepted: Option<String>,
    /// App → version → the manifest URL it was deployed from, for peers that catch up.
    #[serde(default)]
    pub manifests: BTreeMap<String, BTreeMap<String, String>>,
}

/// The supervisor's report cut down to what a coordinator gates on.
pub fn summarize(report: &StatusReport) -> Vec<AppState> {
    report
        .apps
        .iter()
        .map(|app| {
            let live = app.live_version.as_deref();
            let ok = app
                .instances
                .iter()
                .filter(|i| Some(i.version.as_str()) == live && i.routed && i.state == "healthy")
                .count();
            AppState {
                n: app.name.clone(),
                v: app.live_version.clone(),
                ok: u32::try_from(ok).unwrap_or(u32::MAX),
                // Draining instances of the old release are not part of the live count.
                of: u32::try_from(
                    app.instances
                        .iter()
                        .filter(|i| Some(i.version.as_str()) == live)
                        .count(),
                )
                .unwrap_or(u32::MAX),
                p: app.phase.clone(),
            }
        })
        .collect()
}

pub fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AppStatus, InstanceStatus};

    fn instance(version: &str, state: &str, routed: bool) -> InstanceStatus {
        InstanceStatus {
            id: "i".to_owned(),
            version: version.to_owned(),
            pid: None,
            addr: "127.0.0.1:1".to_owned(),
            state: state.to_owned(),
            routed,
            restarts: 0,
            last_failure: None,
            requests: 0,
            errors_5xx: 0,
            pinned_requests: 0,
            client_aborts: 0,
            in_flight: 0,
            p99_us: 0,
        }
    }

    #[test]
    fn only_routed_healthy_instances_of_the_live_version_count() {
        let report = StatusReport {
            apps: vec![AppStatus {
                name: "shop".to_owned(),
                listen: "127.0.0.1:8080".to_owned(),
                routes: "any host".to_owned(),
                shares_address_with: Vec::new(),
                live_version: Some("2".to_owned()),
                phase: "idle".to_owned(),
                instances: vec![
                    instance("2", "healthy", true),
                    instance("2", "starting", false),
                    instance("1", "healthy", true),
                ],
                access_log: None,
                certificate: None,
                canary: None,
                recent_rollouts: Vec::new(),
            }],
        };
        let apps = summarize(&report);
        assert_eq!((apps[0].ok, apps[0].of), (1, 2));
        assert!(apps[0].serves("2"));
        assert!(!apps[0].serves("1"));
    }
}
