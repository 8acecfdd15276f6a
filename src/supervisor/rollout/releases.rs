//! An app's releases on disk: the `current` symlink swap, the list `cutover releases` shows, and
//! pruning old release directories.
//!
//! Pruning deletes directories, so it is deliberately narrow: only direct children of
//! `dest/releases` that are real directories (never a symlink, never anything outside), and never
//! the live release or the one a rollback would go back to.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::protocol::layout;
use crate::protocol::{ReleaseInfo, ReleaseState};
use crate::supervisor::store::AppRecord;

/// Why a release-directory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleasesError {
    #[error("cannot point {link} at {target}: {source}; check that dest is writable")]
    SwapCurrent {
        link: PathBuf,
        target: PathBuf,
        source: io::Error,
    },
}

/// Points `dest/current` at `releases/<version>` atomically: a symlink made under a temp name, then
/// renamed over the old one, so a reader always sees one release or the other; `dest` is fsynced
/// after the rename, so the swap survives a power cut (the agent flushed the release before).
pub fn swap_current(dest: &Path, version: &str) -> Result<(), ReleasesError> {
    let link = layout::current_link(dest);
    // Relative, so the app's home can be moved or bind-mounted elsewhere and still resolve.
    let target = Path::new("releases").join(version);
    let tmp = dest.join(format!(".current.tmp-{}", std::process::id()));
    let fail = |source| ReleasesError::SwapCurrent {
        link: link.clone(),
        target: target.clone(),
        source,
    };
    // A leftover from a crash between symlink and rename is ours to replace.
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).map_err(fail)?;
    fs::rename(&tmp, &link).map_err(fail)?;
    fs::File::open(dest)
        .and_then(|dir| dir.sync_all())
        .map_err(fail)?;
    Ok(())
}

/// The release a plain `cutover rollback` goes back to: the most recent one that was live before
/// the live one, is not bad, and is still on disk.
pub fn rollback_target(record: &AppRecord) -> Option<String> {
    record
        .history
        .iter()
        .rev()
        .filter(|v| Some(v.as_str()) != record.live.as_deref())
        .find(|v| {
            let good = record.releases.get(*v).is_some_and(|r| r.bad.is_none());
            good && layout::release_dir(&record.dest, v).is_dir()
        })
        .cloned()
}

/// Every release directory under `dest/releases`, oldest first, with its state.
pub fn list(record: &AppRecord) -> Vec<ReleaseInfo> {
    let previous = rollback_target(record);
    let infos: Vec<ReleaseInfo> = ordered_dirs(record)
        .into_iter()
        .map(|version| {
            let stored = record.releases.get(&version);
            let bad = stored.and_then(|r| r.bad.clone());
            let state = if record.live.as_deref() == Some(version.as_str()) {
                ReleaseState::Live
            } else if bad.is_some() {
                ReleaseState::Bad
            } else if previous.as_deref() == Some(version.as_str()) {
                ReleaseState::Previous
            } else {
                ReleaseState::Kept
            };
            ReleaseInfo {
                dir: layout::release_dir(&record.dest, &version),
                deployed_at: stored.and_then(|r| r.deployed_at.clone()),
                reason: bad,
                state,
                version,
            }
        })
        .collect();
    infos
}

/// Deletes the oldest release directories beyond `keep_releases`, sparing `protect` (the live
/// release and the rollback target). Returns the versions removed. Errors are logged, not fatal:
/// a release left on disk costs space, not correctness.
pub fn prune(record: &AppRecord, protect: &[&str]) -> Vec<String> {
    let keep = record.spec.keep_releases.max(1) as usize;
    let dirs = ordered_dirs(record);
    let excess = dirs.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for version in dirs.into_iter().take(excess) {
        if protect.contains(&version.as_str()) {
            continue;
        }
        let dir = layout::release_dir(&record.dest, &version);
        match remove_release_dir(&record.dest, &dir) {
            Ok(()) => removed.push(version),
            Err(e) => tracing::warn!("could not prune release {}: {e}", dir.display()),
        }
    }
    removed
}

fn remove_release_dir(dest: &Path, dir: &Path) -> io::Result<()> {
    let releases = fs::canonicalize(layout::releases_dir(dest))?;
    let meta = fs::symlink_metadata(dir)?;
    // Refuse anything that is not a plain directory directly inside releases/: a symlink there
    // could point anywhere, and remove_dir_all must never wander outside the app's home.
    if !meta.is_dir() || fs::canonicalize(dir)?.parent() != Some(releases.as_path()) {
        return Err(io::Error::other("not a release directory, left in place"));
    }
    fs::remove_dir_all(dir)
}

/// Release directory names on disk, oldest first: never-live ones (by modification time) before
/// those that went live (in the order they last did).
fn ordered_dirs(record: &AppRecord) -> Vec<String> {
    let Ok(entries) = fs::read_dir(layout::releases_dir(&record.dest)) else {
        return Vec::new();
    };
    let mut dirs: Vec<(Option<usize>, std::time::SystemTime, String)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            if !layout::valid_version(&name) {
                return None;
            }
            let modified = e.metadata().and_then(|m| m.modified()).ok()?;
            let went_live = record.history.iter().position(|v| *v == name);
            Some((went_live, modified, name))
        })
        .collect();
    dirs.sort();
    dirs.into_iter().map(|(_, _, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::store::ReleaseRecord;

    fn record(dest: &Path, versions: &[&str], live: &str) -> AppRecord {
        let spec: crate::protocol::AppSpec = serde_json::from_value(serde_json::json!({
            "name": "shop", "run": "true", "listen": "127.0.0.1:1", "keep_releases": 2
        }))
        .expect("spec");
        for v in versions {
            fs::create_dir_all(layout::release_dir(dest, v)).expect("mkdir");
        }
        AppRecord {
            spec: spec.clone(),
            dest: dest.to_owned(),
            live: Some(live.to_owned()),
            releases: versions
                .iter()
                .map(|v| {
                    let r = ReleaseRecord {
                        spec: spec.clone(),
                        deployed_at: None,
                        bad: None,
                    };
                    (v.to_string(), r)
                })
                .collect(),
            history: versions.iter().map(|v| v.to_string()).collect(),
            instances: vec![],
            deploy: None,
            next_instance: 0,
            rollouts: Vec::new(),
        }
    }

    #[test]
    fn prune_keeps_live_and_rollback_target_beyond_the_limit() {
        let dir = tempfile::tempdir().expect("temp dir");
        // v4 went live last but is bad: the rollback target is v3, the live one v2 (rolled back).
        let mut rec = record(dir.path(), &["v1", "v2", "v3", "v4"], "v2");
        rec.history = vec!["v1".into(), "v3".into(), "v4".into(), "v2".into()];
        rec.releases.get_mut("v4").expect("v4").bad = Some("crash loop".into());
        let target = rollback_target(&rec).expect("a rollback target");
        assert_eq!(target, "v3");
        let removed = prune(&rec, &["v2", &target]);
        assert_eq!(removed, vec!["v1".to_owned()]);
        assert!(layout::release_dir(dir.path(), "v2").is_dir());
        assert!(layout::release_dir(dir.path(), "v3").is_dir());
    }

    #[test]
    fn prune_never_follows_a_symlink_out_of_releases() {
        let dir = tempfile::tempdir().expect("temp dir");
        let outside = tempfile::tempdir().expect("temp dir");
        fs::write(outside.path().join("precious"), b"x").expect("write");
        let rec = record(dir.path(), &["v2", "v3"], "v3");
        std::os::unix::fs::symlink(outside.path(), layout::release_dir(dir.path(), "v0"))
            .expect("symlink");
        prune(&rec, &["v3"]);
        assert!(outside.path().join("precious").exists());
    }

    #[test]
    fn swap_current_replaces_the_link() {
        let dir = tempfile::tempdir().expect("temp dir");
        swap_current(dir.path(), "v1").expect("first swap");
        swap_current(dir.path(), "v2").expect("second swap");
        let target = fs::read_link(layout::current_link(dir.path())).expect("read link");
        assert_eq!(target, Path::new("releases/v2"));
    }
}
