//! The supervisor's memory across restarts: one versioned JSON file in the state dir, the only
//! thing this module's callers persist and the only code that writes it.
//!
//! Every write is atomic (temp file in the same dir, write, fsync, rename, fsync the dir), so a
//! crash at any instant leaves either the old or the new state, never half of one. A file that
//! cannot be read as schema 1 is set aside as `state.json.corrupt-<timestamp>` and the supervisor
//! starts fresh: losing the state is recoverable (apps keep running, a redeploy fixes it), while
//! refusing to start would leave every app unsupervised.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::protocol::{AppSpec, RolloutOutcome};
use crate::supervisor::process::ProcessId;

/// The stored format's version; bump it (and add a fixture) when a change is not additive.
pub const SCHEMA: u32 = 1;

const FILE_NAME: &str = "state.json";

/// Everything the supervisor knows, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub schema: u32,
    #[serde(default)]
    pub apps: BTreeMap<String, AppRecord>,
}

impl Default for State {
    fn default() -> Self {
        State {
            schema: SCHEMA,
            apps: BTreeMap::new(),
        }
    }
}

/// One app: its releases, what is live, which processes serve it, and any rollout in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    /// The spec of the live release (or of the first deploy, while nothing is live yet).
    pub spec: AppSpec,
    /// The app's home (`releases/`, `current`, `shared/`).
    pub dest: PathBuf,
    /// The version serving traffic, if any.
    pub live: Option<String>,
    /// Every release the supervisor was asked to run, by version.
    #[serde(default)]
    pub releases: BTreeMap<String, ReleaseRecord>,
    /// Versions in the order they went live, oldest first, each at most once (its last time).
    #[serde(default)]
    pub history: Vec<String>,
    /// Instances of the live release.
    #[serde(default)]
    pub instances: Vec<InstanceRecord>,
    /// A rollout that had not finished when this was written: a "zombie" if found at start.
    #[serde(default)]
    pub deploy: Option<DeployRecord>,
    /// Counter for unique instance ids, so a log file or a draining backend is never reused.
    #[serde(default)]
    pub next_instance: u64,
    /// How its last rollouts ended, oldest first (at most `RECENT_ROLLOUTS`).
    #[serde(default)]
    pub rollouts: Vec<RolloutOutcome>,
}

impl AppRecord {
    /// An app seen for the first time: nothing live, no release, no instance.
    pub fn new(spec: AppSpec, dest: PathBuf) -> AppRecord {
        AppRecord {
            spec,
            dest,
            live: None,
            releases: BTreeMap::new(),
            history: Vec::new(),
            instances: Vec::new(),
            deploy: None,
            next_instance: 0,
            rollouts: Vec::new(),
        }
    }
}

/// One release as the supervisor saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// The spec it was deployed with; a rollback runs it again with this one.
    pub spec: AppSpec,
    /// RFC 3339 time it last went live.
    #[serde(default)]
    pub deployed_at: Option<String>,
    /// Why it must not be picked again (failed health, crash loop, rolled away from).
    #[serde(default)]
    pub bad: Option<String>,
}

/// One instance: enough to re-adopt it (pid and start time) or to start it again on its port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    pub version: String,
    pub port: u16,
    /// Absent between the record and the spawn, or while the instance is down.
    #[serde(default)]
    pub process: Option<ProcessId>,
}

/// A rollout in progress: the candidates it started and, once it switched, the instances it is
/// still draining. Recovery stops both and keeps whatever `live` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRecord {
    pub version: String,
    #[serde(default)]
    pub candidates: Vec<InstanceRecord>,
    #[serde(default)]
    pub retiring: Vec<InstanceRecord>,
}

/// Why the state file could not be written (or its directory prepared).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {path}: {source}; check its parent's permissions")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the state file {path}: {source}; check free space and permissions")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode the state: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The state file and the last state written to it. Callers change one app at a time; the lock
/// is held only to copy and write, never across an await.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    state: Mutex<State>,
}

impl Store {
    /// Opens the state in `dir`, creating the directory (mode 0700) when missing. A missing file
    /// is a fresh start; an unreadable one is set aside loudly and replaced by a fresh state.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        create_private_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let state = match fs::read(&path) {
            Ok(bytes) => match parse(&bytes) {
                Ok(state) => state,
                Err(why) => {
                    set_aside(&path, &why);
                    State::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                set_aside(&path, &e.to_string());
                State::default()
            }
        };
        Ok(Store {
            dir: dir.to_owned(),
            state: Mutex::new(state),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// A copy of the whole state, as last written.
    pub fn snapshot(&self) -> State {
        self.lock().clone()
    }

    /// Replaces one app's record and writes the file.
    pub fn put(&self, name: &str, record: &AppRecord) -> Result<(), StoreError> {
        self.change(|state| {
            state.apps.insert(name.to_owned(), record.clone());
        })
    }

    /// Forgets one app and writes the file.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.change(|state| {
            state.apps.remove(name);
        })
    }

    /// Writes the current state again (at shutdown, so the file is known to be complete).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.change(|_| {})
    }

    /// Applies `edit` and writes the file, holding the lock from the change to the rename so
    /// that writes land in the order of their changes.
    fn change(&self, edit: impl FnOnce(&mut State)) -> Result<(), StoreError> {
        blocking(|| {
            let mut state = self.lock();
            edit(&mut state);
            write_atomically(&self.path(), &serde_json::to_vec_pretty(&*state)?)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-changed State (each change is one
        // insert or remove), so a poisoned lock is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs a write (its fsyncs can take milliseconds on a busy disk) without stalling the tasks that
/// share the calling worker thread: on the supervisor's multi-thread runtime they move to another
/// thread meanwhile. Elsewhere (no runtime, or a current-thread one) it just runs. Writes keep
/// their order either way: each holds the state's lock from change to rename.
fn blocking<T>(write: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(write)
        }
        _ => write(),
    }
}

/// Parses a stored state, refusing any schema this build does not know.
pub fn parse(bytes: &[u8]) -> Result<State, String> {
    #[derive(Deserialize)]
    struct Probe {
        schema: u32,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if probe.schema != SCHEMA {
        return Err(format!(
            "schema {} is not {SCHEMA}, the only one this build reads",
            probe.schema
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

/// Renames an unreadable state file out of the way, so the operator can inspect it later.
fn set_aside(path: &Path, why: &str) {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let aside = path.with_file_name(format!("{FILE_NAME}.corrupt-{stamp}"));
    match fs::rename(path, &aside) {
        Ok(()) => tracing::error!(
            "state file {} is unreadable ({why}); moved it to {} and starting with no apps: \
             running apps are not adopted, redeploy them",
            path.display(),
            aside.display()
        ),
        Err(e) => tracing::error!(
            "state file {} is unreadable ({why}) and could not be moved to {} ({e}); \
             starting with no apps, the next write replaces it",
            path.display(),
            aside.display()
        ),
    }
}

/// temp file in the same directory → write → fsync → rename over → fsync the directory, so the
/// rename itself is durable too.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let fail = |source| StoreError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".state.json.")
        .tempfile_in(dir)
        .map_err(fail)?;
    tmp.write_all(bytes).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_lets_the_other_tasks_of_its_thread_run() {
        // One worker thread: without `block_in_place` nothing else runs while the write blocks.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let (ran_tx, ran_rx) = std::sync::mpsc::channel();
        let (writing_tx, writing) = tokio::sync::oneshot::channel();
        runtime.block_on(async {
            let writer = tokio::spawn(async move {
                blocking(|| {
                    writing_tx.send(()).unwrap();
                    ran_rx.recv_timeout(std::time::Duration::from_secs(10))
                })
            });
            writing.await.unwrap();
            // Spawned while the write blocks the only worker thread.
            let other = tokio::spawn(async move { ran_tx.send(()).unwrap() });
            other.await.unwrap();
            writer
                .await
                .unwrap()
                .expect("the other task ran during the write");
        });
        assert_eq!(blocking(|| 7), 7, "outside a runtime it just runs");
    }

    fn fixture() -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/state/v1.json");
        fs::read(&path).expect("fixtures/state/v1.json is in the repository")
    }

    #[test]
    fn stored_v1_fixture_parses() {
        let state = parse(&fixture()).expect("v1 fixture parses");
        let shop = &state.apps["shop"];
        assert_eq!(shop.live.as_deref(), Some("1.4.1"));
        assert_eq!(shop.instances[0].process.map(|p| p.pid), Some(4242));
        assert_eq!(
            shop.deploy.as_ref().map(|d| d.version.as_str()),
            Some("1.4.2")
        );
        assert!(shop.releases["1.4.0"].bad.is_some());
    }

    #[test]
    fn write_then_open_round_trips() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open");
        let state = parse(&fixture()).expect("v1 fixture parses");
        store.put("shop", &state.apps["shop"]).expect("put");
        let again = Store::open(dir.path()).expect("reopen");
        assert_eq!(again.snapshot(), state);
        store.remove("shop").expect("remove");
        assert!(Store::open(dir.path())
            .expect("reopen")
            .snapshot()
            .apps
            .is_empty());
    }

    #[test]
    fn unknown_schema_is_set_aside_and_start_is_fresh() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join(FILE_NAME), br#"{"schema": 99, "apps": {}}"#).expect("write");
        let store = Store::open(dir.path()).expect("open");
        assert!(store.snapshot().apps.is_empty());
        let aside: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("state.json.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "one set-aside file, got {aside:?}");
        assert!(!dir.path().join(FILE_NAME).exists());
    }
}
