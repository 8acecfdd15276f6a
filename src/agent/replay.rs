//! Replay protection: the last event handled per event name, so that a restarted `consul watch`
//! (which hands every buffered event over again) does not redeploy what was already deployed.
//!
//! A mark is a small JSON file `STATE/replay/<source>-<name>.json`, written atomically (temp file,
//! fsync, rename, fsync of the directory) so a crash leaves either the old mark or the new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::input::EventId;

/// What is remembered of the last handled event of one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub id: Option<String>,
    pub ltime: u64,
    /// When it was handled (RFC 3339), for an operator reading the file.
    pub handled_at: String,
}

/// Why a mark could not be written.
#[derive(Debug, thiserror::Error)]
#[error("could not record event as handled in {path}: {source}: check that the state directory is writable (--state-dir)")]
pub struct ReplayError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn mark_path(state_dir: &Path, event: &EventId) -> PathBuf {
    // Event names are free text: keep the readable ones, hash the rest into a safe file name.
    let readable = !event.name.is_empty()
        && event.name.len() <= 100
        && event
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !event.name.starts_with('.');
    let name = if readable {
        event.name.clone()
    } else {
        use sha2::Digest;
        format!(
            "h{}",
            &hex::encode(sha2::Sha256::digest(event.name.as_bytes()))[..32]
        )
    };
    state_dir
        .join("replay")
        .join(format!("{}-{name}.json", event.source.as_str()))
}

/// The mark of the last handled event of this name, if any. An unreadable mark counts as none:
/// deploying once more is safer than never deploying again.
pub fn last_handled(state_dir: &Path, event: &EventId) -> Option<Mark> {
    let bytes = std::fs::read(mark_path(state_dir, event)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether `event` was already handled (the same ID, or a Lamport time not after the mark's).
pub fn already_handled(state_dir: &Path, event: &EventId) -> Option<Mark> {
    let mark = last_handled(state_dir, event)?;
    let same_id = event.id.is_some() && mark.id == event.id;
    (same_id || event.ltime <= mark.ltime).then_some(mark)
}

/// Records `event` as handled.
pub fn record(state_dir: &Path, event: &EventId) -> Result<(), ReplayError> {
    let path = mark_path(state_dir, event);
    let err = |source| ReplayError {
        path: path.clone(),
        source,
    };
    let dir = path.parent().unwrap_or(state_dir);
    std::fs::create_dir_all(dir).map_err(err)?;
    let mark = Mark {
        id: event.id.clone(),
        ltime: event.ltime,
        handled_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    let json = serde_json::to_vec_pretty(&mark).map_err(|e| err(e.into()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(&json).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(&path).map_err(|e| err(e.error))?;
    // The rename is only durable once the directory entry is on disk.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::input::EventSource;

    fn event(id: Option<&str>, ltime: u64) -> EventId {
        EventId {
            source: EventSource::Consul,
            name: "deploy".into(),
            id: id.map(str::to_owned),
            ltime,
        }
    }

    #[test]
    fn same_or_older_events_are_replays_newer_are_not() {
        let state = tempfile::tempdir().expect("tempdir");
        assert!(already_handled(state.path(), &event(Some("a"), 5)).is_none());
        record(state.path(), &event(Some("a"), 5)).expect("record");
        assert!(already_handled(state.path(), &event(Some("a"), 5)).is_some());
        assert!(already_handled(state.path(), &event(Some("z"), 4)).is_some());
        assert!(already_handled(state.path(), &event(Some("b"), 6)).is_none());
    }

    #[test]
    fn odd_names_get_safe_file_names() {
        let state = Path::new("/state");
        let mut e = event(None, 1);
        e.name = "../../etc/passwd".into();
        let path = mark_path(state, &e);
        assert_eq!(path.parent(), Some(Path::new("/state/replay")));
    }
}
