//! Stray instances: app processes a supervisor of this state directory started but the state
//! file does not point at, found by the marks every instance carries in its environment.
//!
//! The state file records an instance before it starts and its pid just after; a `kill -9` of the
//! supervisor in between leaves a running process that the file does not name. Every instance is
//! started with `CUTOVER_SUPERVISOR` (the state directory) and `CUTOVER_INSTANCE` (its id) in its
//! environment, so a restarted supervisor finds such processes in /proc: one whose id is a live
//! instance is adopted when the recorded pid is gone, any other (an interrupted rollout's
//! candidate) is stopped. Only process-group leaders count: an instance leads its own group, and
//! the helpers it starts inherit its marks but stay in its group. A helper that made a group of
//! its own carries its instance's id: that of a live instance is left alone (if the instance
//! itself is gone, the earliest started of the processes carrying its id is taken for it, and
//! the health checks judge it), that of a candidate is stopped with it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::supervisor::process::{self, ProcessId, Running};

/// The state directory of the supervisor that started the process.
pub const SUPERVISOR_VAR: &str = "CUTOVER_SUPERVISOR";
/// The instance id (`APP-VERSION-N`), unique within a state directory.
pub const INSTANCE_VAR: &str = "CUTOVER_INSTANCE";
/// The app's name.
pub const APP_VAR: &str = "CUTOVER_APP";

/// How a stray of an app the state file no longer knows is stopped.
const FALLBACK_STOP: (&str, Duration) = ("SIGTERM", Duration::from_secs(10));

/// The marks of the instance `id` of `app` started by the supervisor of `state_dir`.
pub fn marks(state_dir: &Path, app: &str, id: &str) -> [(String, String); 3] {
    [
        (SUPERVISOR_VAR.to_owned(), supervisor_mark(state_dir)),
        (INSTANCE_VAR.to_owned(), id.to_owned()),
        (APP_VAR.to_owned(), app.to_owned()),
    ]
}

/// The state directory as an absolute path, so a relative `--state-dir` marks the same way
/// from any working directory.
fn supervisor_mark(state_dir: &Path) -> String {
    std::fs::canonicalize(state_dir)
        .unwrap_or_else(|_| state_dir.to_owned())
        .to_string_lossy()
        .into_owned()
}

/// One marked process found running.
#[derive(Debug, Clone)]
pub struct Stray {
    pub process: ProcessId,
    pub app: String,
    /// The port it was started on (its `PORT`), if it has one.
    pub port: Option<u16>,
}

/// The marked processes of one state directory, by instance id.
#[derive(Debug, Default)]
pub struct Strays {
    by_instance: BTreeMap<String, Vec<Stray>>,
}

impl Strays {
    /// Every live process-group leader in /proc marked as started by the supervisor of
    /// `state_dir` (other users' processes cannot be read, and are not ours).
    pub fn scan(state_dir: &Path) -> Strays {
        let mark = supervisor_mark(state_dir);
        let mut strays = Strays::default();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return strays;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some((id, stray)) = read_marked(pid, &mark) {
                strays.by_instance.entry(id).or_default().push(stray);
            }
        }
        for found in strays.by_instance.values_mut() {
            // The instance itself started before any helper it set up in a group of its own.
            found.sort_by_key(|s| s.process.start_time);
        }
        strays
    }

    /// Takes the process running as instance `id`, for adoption; its helpers stay put.
    pub fn adopt(&mut self, id: &str) -> Option<(Running, Stray)> {
        let found = self.by_instance.remove(id)?;
        found
            .into_iter()
            .find_map(|stray| Some((process::adopt(stray.process)?, stray)))
    }

    /// Leaves alone whatever runs as one of `ids` (live instances and their helpers).
    pub fn keep<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            self.by_instance.remove(id);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_instance.is_empty()
    }

    /// Stops every process left (instances the state file does not list as live), each with
    /// its app's stop signal and timeout from `stops` when the app is known.
    pub async fn stop_all(self, stops: &BTreeMap<String, (String, Duration)>) {
        let mut stopping = tokio::task::JoinSet::new();
        for (id, found) in self.by_instance {
            for stray in found {
                let Some(mut running) = process::adopt(stray.process) else {
                    continue;
                };
                let (signal, timeout) = stops
                    .get(&stray.app)
                    .cloned()
                    .unwrap_or_else(|| (FALLBACK_STOP.0.to_owned(), FALLBACK_STOP.1));
                let id = id.clone();
                stopping.spawn(async move {
                    let status = process::stop(&mut running, &signal, timeout).await;
                    tracing::warn!(
                        app = %stray.app,
                        "stopped {id} (pid {}), started by an earlier run of this supervisor \
                         but not in its state file: {status}",
                        stray.process.pid
                    );
                });
            }
        }
        while stopping.join_next().await.is_some() {}
    }
}

/// The instance id and the stray, if `pid` is a live group leader carrying `mark`.
fn read_marked(pid: u32, mark: &str) -> Option<(String, Stray)> {
    if pid == std::process::id() {
        return None;
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut vars = BTreeMap::new();
    for pair in environ.split(|&b| b == 0) {
        let pair = std::str::from_utf8(pair).ok();
        if let Some((key, value)) = pair.and_then(|p| p.split_once('=')) {
            if [SUPERVISOR_VAR, INSTANCE_VAR, APP_VAR, "PORT"].contains(&key) {
                vars.insert(key, value);
            }
        }
    }
    if vars.get(SUPERVISOR_VAR) != Some(&mark) {
        return None;
    }
    let stat = process::stat(pid).ok()?;
    if stat.zombie || stat.group != pid {
        return None;
    }
    let stray = Stray {
        process: ProcessId {
            pid,
            start_time: stat.start_time,
        },
        app: vars.get(APP_VAR).copied().unwrap_or_default().to_owned(),
        port: vars.get("PORT").and_then(|p| p.parse().ok()),
    };
    Some(((*vars.get(INSTANCE_VAR)?).to_owned(), stray))
}
