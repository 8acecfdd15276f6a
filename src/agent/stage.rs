//! Staging (`cutover apply --stage-only`): an `app:` release fetched, verified and unpacked into
//! `dest/releases/VERSION` ahead of its switch, with no hook run and nothing asked of the
//! supervisor; and the marker that lets the later deploy reuse that tree instead of downloading.
//!
//! The marker `dest/releases/.VERSION.staged` holds the manifest's checksum (`sha256:HEX`) and is
//! written only after the tree is in place, so a tree whose marker is missing or names another
//! checksum is never trusted: staging fetches it again, and a deploy downloads as it always did
//! (and drops the marker, since what it keeps or places is then not known to be that archive).
//! A manifest without `app:` has nothing to stage: its files go to `dest` by rsync or rename in
//! one step at deploy time, so staging refuses it.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::checksum::Checksum;
use super::lock::{self, LockError};
use super::log::RunLog;
use super::manifest::{Files, Manifest};
use super::pipeline::{self, PipelineError, STAGING_PREFIX};
use super::place::{self, PlaceError};
use super::release::{self, ReleaseError};
use super::Options;
use crate::protocol::{layout, AppSpec};

/// Why a release could not be staged; nothing already live is touched by any of these.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("nothing to stage: --stage-only needs a manifest with `src` and an `app:` section (plain files are placed by rsync or mv in one step); deploy it with `cutover apply URL`")]
    NotAnApp,
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Place(#[from] PlaceError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("could not put the staged release in place: {0:#}")]
    Placing(anyhow::Error),
    #[error("release {version} is live in {} but was not staged from {checksum}: a release never changes once live; give the new build a version of its own", .dest.display())]
    LiveDiffers {
        version: String,
        dest: PathBuf,
        checksum: String,
    },
    #[error("could not {what} {}: {source}; check that dest is writable", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Stages the manifest's release: fetch, verify, unpack into `dest/releases/VERSION`, mark it.
/// A release already staged from the same checksum is left as it is, without a download.
pub async fn run(manifest: &Manifest, opts: &Options, log: &RunLog) -> Result<(), StageError> {
    let Some((files, app)) = manifest
        .files
        .as_ref()
        .and_then(|f| Some((f, f.app.as_ref()?)))
    else {
        return Err(StageError::NotAnApp);
    };
    let dest = opts.start_dir.join(&files.dest);
    // The same lock as a deploy to this dest, taken the same way (before dest exists).
    let _lock = lock::acquire(&opts.state_dir, &dest, opts.lock_timeout, log).await?;
    std::fs::create_dir_all(&dest).map_err(|source| StageError::Io {
        what: "create dest",
        path: dest.clone(),
        source,
    })?;
    let version = version_of(app, &files.checksum)?;
    let target = layout::release_dir(&dest, &version);
    if is_staged(&dest, &version, &files.checksum) {
        log.line(format!(
            "release {version} is already staged in {} from {}: nothing to fetch",
            target.display(),
            marker_text(&files.checksum)
        ));
        return Ok(());
    }
    let staged = pipeline::fetch_and_unpack(
        &files.src,
        &files.checksum,
        &dest,
        &opts.fetch,
        &opts.limits,
        log,
    )
    .await?;
    place::set_mode(staged.path(), files.dest_mode)?;
    if target.symlink_metadata().is_ok() {
        set_aside(&dest, &version, &files.checksum, log)?;
    }
    release::place(&dest, &version, staged, &app.shared, log).map_err(StageError::Placing)?;
    mark(&dest, &version, &files.checksum)?;
    log.line(format!(
        "staged {} {version} in {} (not live: `cutover apply` of the same manifest switches to it)",
        app.name,
        target.display()
    ));
    Ok(())
}

/// The release's version, known before the download: the manifest's, or the start of its
/// checksum (which the archive's digest must equal).
pub fn version_of(app: &AppSpec, checksum: &Checksum) -> Result<String, ReleaseError> {
    release::release_version(app, &checksum.to_hex())
}

/// Whether `dest/releases/VERSION` is a tree staged from exactly `checksum`.
pub fn is_staged(dest: &Path, version: &str, checksum: &Checksum) -> bool {
    let tree = layout::release_dir(dest, version);
    let is_dir = tree.symlink_metadata().is_ok_and(|m| m.is_dir());
    is_dir
        && std::fs::read_to_string(marker_path(dest, version))
            .is_ok_and(|text| text.trim() == marker_text(checksum))
}

/// The release this deploy can switch to without a download, if `apply --stage-only` put it in
/// place from the same checksum; otherwise drops any marker of that version (the deploy then
/// downloads, and what it places or keeps is not known to be a staged tree).
pub fn reusable(files: &Files, app: &AppSpec, dest: &Path, log: &RunLog) -> Option<String> {
    let version = version_of(app, &files.checksum).ok()?;
    if is_staged(dest, &version, &files.checksum) {
        log.line(format!(
            "release {version} was staged in {} from {}: switching without a download",
            layout::release_dir(dest, &version).display(),
            marker_text(&files.checksum)
        ));
        return Some(version);
    }
    let _ = std::fs::remove_file(marker_path(dest, &version));
    None
}

fn marker_path(dest: &Path, version: &str) -> PathBuf {
    layout::releases_dir(dest).join(format!(".{version}.staged"))
}

fn marker_text(checksum: &Checksum) -> String {
    format!("{}:{}", checksum.algorithm, checksum.to_hex())
}

/// Writes the marker last, atomically (temp file, fsync, rename): it vouches for a whole tree.
fn mark(dest: &Path, version: &str, checksum: &Checksum) -> Result<(), StageError> {
    let path = marker_path(dest, version);
    let io = |source| StageError::Io {
        what: "write the staging marker",
        path: path.clone(),
        source,
    };
    let dir = layout::releases_dir(dest);
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
    writeln!(tmp, "{}", marker_text(checksum)).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(&path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Removes a tree of this version that was not staged from `checksum`, unless it is live: a
/// live release never changes under its running instances.
fn set_aside(
    dest: &Path,
    version: &str,
    checksum: &Checksum,
    log: &RunLog,
) -> Result<(), StageError> {
    let target = layout::release_dir(dest, version);
    let live = std::fs::canonicalize(layout::current_link(dest)).ok();
    if live.is_some() && live == std::fs::canonicalize(&target).ok() {
        return Err(StageError::LiveDiffers {
            version: version.to_owned(),
            dest: dest.to_path_buf(),
            checksum: marker_text(checksum),
        });
    }
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| StageError::Io { what, path, source }
    };
    // Renamed into a staging directory first, so that a crash halfway through the removal
    // leaves a leftover the next deploy sweeps, never half a release under releases/.
    let bin = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(dest)
        .map_err(io("create a staging directory in", dest))?;
    std::fs::rename(&target, bin.path().join(version))
        .map_err(io("move aside the old tree", &target))?;
    log.line(format!(
        "release {version} in {} was not staged from {}: staging it again",
        target.display(),
        marker_text(checksum)
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(byte: u8) -> Checksum {
        Checksum {
            algorithm: crate::agent::checksum::Algorithm::Sha256,
            digest: vec![byte; 32],
        }
    }

    #[test]
    fn only_a_whole_tree_marked_with_the_same_checksum_counts_as_staged() {
        let dest = tempfile::tempdir().unwrap();
        let dest = dest.path();
        std::fs::create_dir_all(layout::release_dir(dest, "3")).unwrap();
        assert!(!is_staged(dest, "3", &sum(1)), "a tree without a marker");
        mark(dest, "3", &sum(1)).unwrap();
        assert!(is_staged(dest, "3", &sum(1)));
        assert!(!is_staged(dest, "3", &sum(2)), "another checksum");
        std::fs::remove_dir(layout::release_dir(dest, "3")).unwrap();
        assert!(!is_staged(dest, "3", &sum(1)), "a marker without its tree");
    }
}
