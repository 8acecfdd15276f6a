//! What each watch remembers across restarts, one JSON file per watch under `state_dir/watch/`:
//! the last check, the newest version seen, the last deploy and its result, and the versions
//! skipped with their reasons.
//!
//! Files are written atomically (temp file, fsync, rename, fsync the directory) so a crash never
//! leaves half a state; a corrupt file is set aside loudly and the watch starts afresh, which at
//! worst re-evaluates releases (a version that failed before is then tried once more).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Bumped when the stored shape changes incompatibly.
pub const SCHEMA: u32 = 1;

/// The persisted state of one watch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchState {
    pub schema: u32,
    pub name: String,
    /// The source in one line (`github acme/shop asset shop-*.tar.gz`).
    pub source: String,
    /// RFC 3339 time of the last check, and what it found.
    pub last_check: Option<String>,
    pub last_check_result: Option<String>,
    /// The newest version published (GitHub) or the manifest's ETag.
    pub last_seen: Option<String>,
    /// The version this watch last deployed successfully.
    pub deployed: Option<String>,
    pub last_result: Option<DeployRecord>,
    /// Newer versions passed over at the last check, with the reason (recomputed each check).
    #[serde(default)]
    pub skipped: BTreeMap<String, String>,
    /// Versions whose deploy failed: never tried again unless removed from here by hand.
    #[serde(default)]
    pub failed: BTreeMap<String, String>,
    /// Validator of the last full answer, sent back as `If-None-Match`.
    pub etag: Option<String>,
    /// `Last-Modified` of a watched manifest, sent back as `If-Modified-Since`.
    pub last_modified: Option<String>,
    /// sha256 of the last deployed manifest body, so an ETag change alone does not redeploy.
    pub content_sha256: Option<String>,
    /// Fingerprint of the watch's configuration; a change discards the ETag so the releases are
    /// evaluated again under the new rules.
    pub config_fingerprint: Option<String>,
    /// Set while GitHub's rate limit holds the watch back (RFC 3339 with milliseconds, rounded
    /// up; older files hold whole seconds).
    pub paused_until: Option<String>,
    /// Rate-limit answers in a row; each doubles the next pause (GitHub asks for an
    /// exponentially growing wait when limits keep being hit).
    #[serde(default)]
    pub limit_strikes: u32,
    /// How many deploys this watch started.
    #[serde(default)]
    pub deploys: u64,
}

/// The outcome of one deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRecord {
    pub version: String,
    pub ok: bool,
    pub at: String,
    /// The deploy's last output line (its error on failure).
    pub message: String,
    /// The rendered manifest that was applied.
    pub manifest: PathBuf,
}

/// Why state could not be saved.
#[derive(Debug, thiserror::Error)]
#[error("cannot write watch state {path}: {source}; check that the state dir is writable")]
pub struct StateError {
    path: PathBuf,
    source: std::io::Error,
}

/// Now as RFC 3339, the format of every time in the state.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// `until` as RFC 3339 with milliseconds, rounded up: a pause read back from the state ends at
/// or after the instant GitHub named, never before (whole seconds cut up to a second off it).
pub fn pause_rfc3339(until: SystemTime) -> String {
    let sub_milli = until
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos() % 1_000_000);
    let up = if sub_milli == 0 {
        until
    } else {
        until + std::time::Duration::from_nanos(u64::from(1_000_000 - sub_milli))
    };
    humantime::format_rfc3339_millis(up).to_string()
}

/// `state_dir/watch`: the files of all watches.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("watch")
}

fn file(state_dir: &Path, name: &str) -> PathBuf {
    dir(state_dir).join(format!("{name}.json"))
}

/// Loads a watch's state; absent → fresh, corrupt → set aside (logged) and fresh.
pub fn load(state_dir: &Path, name: &str) -> WatchState {
    let path = file(state_dir, name);
    let fresh = WatchState {
        schema: SCHEMA,
        name: name.to_owned(),
        ..WatchState::default()
    };
    let Ok(bytes) = std::fs::read(&path) else {
        return fresh;
    };
    match serde_json::from_slice::<WatchState>(&bytes) {
        Ok(state) if state.schema == SCHEMA => state,
        other => {
            let aside = path.with_extension(format!("corrupt-{}", std::process::id()));
            let why = match other {
                Ok(s) => format!("schema {} is not {SCHEMA}", s.schema),
                Err(e) => e.to_string(),
            };
            tracing::error!(
                "watch state {} is unreadable ({why}); moved to {} and starting afresh",
                path.display(),
                aside.display()
            );
            let _ = std::fs::rename(&path, &aside);
            fresh
        }
    }
}

/// Every watch's state in the directory, by name (for `cutover status`).
pub fn load_all(state_dir: &Path) -> Vec<WatchState> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json").map(str::to_owned)
        })
        .collect();
    names.sort();
    names.iter().map(|n| load(state_dir, n)).collect()
}

/// Writes a watch's state atomically: temp file, fsync, rename, fsync the directory.
pub fn save(state_dir: &Path, state: &WatchState) -> Result<(), StateError> {
    let path = file(state_dir, &state.name);
    let err = |source| StateError {
        path: path.clone(),
        source,
    };
    let dir = dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(err)?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| err(std::io::Error::other(e)))?;
    let tmp = dir.join(format!(".{}.json.tmp", state.name));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&json).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(err)?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_corrupt_file_is_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let mut state = load(tmp.path(), "shop");
        assert_eq!(state.schema, SCHEMA);
        state.deployed = Some("1.2.3".into());
        state.failed.insert("1.3.0".into(), "apply exited 1".into());
        save(tmp.path(), &state).unwrap();
        assert_eq!(load(tmp.path(), "shop"), state);
        assert_eq!(load_all(tmp.path()), vec![state]);

        std::fs::write(file(tmp.path(), "shop"), b"{not json").unwrap();
        assert_eq!(load(tmp.path(), "shop").deployed, None);
        let aside = std::fs::read_dir(dir(tmp.path()))
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
        assert!(aside, "the corrupt file is kept for inspection");
    }

    #[test]
    fn a_pause_is_kept_to_the_millisecond_and_never_ends_early() {
        let named =
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_250_000_001);
        let stored = pause_rfc3339(named);
        assert_eq!(stored, "2023-11-14T22:13:20.251Z");
        let read = humantime::parse_rfc3339(&stored).unwrap();
        assert!(read >= named, "{stored} ends before the named instant");
        let exact = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_250);
        assert_eq!(pause_rfc3339(exact), "2023-11-14T22:13:20.250Z");
    }

    #[test]
    fn the_stored_shape_reads_back_from_its_fixture() {
        let text = include_str!("../../fixtures/github/watch-state-v1.json");
        let state: WatchState = serde_json::from_str(text).unwrap();
        assert_eq!(state.schema, SCHEMA);
        assert_eq!(state.deployed.as_deref(), Some("1.4.2"));
    }
}
