//! Putting a verified, unpacked tree in place: the real `rsync -a --delete`, or an atomic rename
//! (`mv`), after giving the tree's root the manifest's `dest_mode`; either way the files are on
//! disk before the deploy goes on (`durable`: syncfs of the tree before the rename and fsync of
//! `dest`'s parent after it, or syncfs of `dest` after rsync).
//!
//! Staging happens in `dest`'s parent directory, so the rename never crosses filesystems (stretcher
//! unpacks in /tmp and `mv` fails with EXDEV whenever /tmp is a tmpfs).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::durable::{Durability, SyncError};
use super::hooks::wait_relaying;
use super::log::RunLog;
use super::pipeline::Staged;

/// Why the files could not be placed; one line naming the path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("dest {dest} has no parent directory {parent}: create it first (cutover does not create it, as stretcher does not)")]
    NoParent { dest: PathBuf, parent: PathBuf },
    #[error("rsync not found: install it (apt-get install rsync)")]
    RsyncMissing,
    #[error("rsync could not start: {0}")]
    RsyncSpawn(#[source] std::io::Error),
    #[error("rsync into {dest} failed ({status}): see its output above")]
    RsyncFailed {
        dest: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error(
        "exclude_from {0:?} is not a file in the archive: add it to the archive or fix the name"
    )]
    ExcludeFromMissing(String),
    #[error("dest {0} is not empty: sync_strategy mv only replaces an absent or empty directory; empty it or use rsync")]
    NotEmpty(PathBuf),
    #[error("could not rename the unpacked tree onto {dest}: {source}")]
    Rename {
        dest: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("could not set dest_mode {mode:o} on the unpacked tree: {source}")]
    Mode {
        mode: u32,
        #[source]
        source: std::io::Error,
    },
}

/// The directory the archive is unpacked in: `dest`'s parent, which must exist.
pub fn staging_parent(dest: &Path) -> Result<PathBuf, PlaceError> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(PlaceError::NoParent {
            dest: dest.to_path_buf(),
            parent,
        });
    }
    Ok(parent)
}

/// Gives the unpacked root the manifest's mode, whatever the archive's own `./` entry said.
pub fn set_mode(root: &Path, mode: u32) -> Result<(), PlaceError> {
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode))
        .map_err(|source| PlaceError::Mode { mode, source })
}

/// What rsync needs besides the two trees.
#[derive(Debug, Clone, Copy)]
pub struct RsyncOptions<'a> {
    pub excludes: &'a [String],
    /// Path relative to the unpacked root.
    pub exclude_from: Option<&'a str>,
    /// Verbosity option as given on the command line (`-v`); `None` or empty passes none.
    pub verbose: Option<&'a str>,
}

/// `rsync -a --delete [VERBOSE] [--exclude-from F] [--exclude P]… UNPACKED/ DEST/`, its output
/// into the log, then a syncfs of `dest` (not rsync's `--fsync`: see `durable` for why).
pub async fn rsync(
    unpacked: &Path,
    dest: &Path,
    opts: RsyncOptions<'_>,
    durability: Durability,
    log: &RunLog,
) -> Result<(), PlaceError> {
    let mut cmd = Command::new("rsync");
    cmd.arg("-a").arg("--delete");
    if let Some(v) = opts.verbose.filter(|v| !v.is_empty()) {
        cmd.arg(v);
    }
    if let Some(from) = opts.exclude_from {
        let path = unpacked.join(from.trim_start_matches('/'));
        if !path.is_file() {
            return Err(PlaceError::ExcludeFromMissing(from.to_owned()));
        }
        cmd.arg("--exclude-from").arg(path);
    }
    for pattern in opts.excludes {
        cmd.arg("--exclude").arg(pattern);
    }
    // Trailing slashes: copy the tree's content into dest, not the tree as a subdirectory.
    cmd.arg(with_slash(unpacked)).arg(with_slash(dest));
    log.line(format!(
        "rsync {} into {}",
        unpacked.display(),
        dest.display()
    ));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PlaceError::RsyncMissing,
            _ => PlaceError::RsyncSpawn(e),
        })?;
    let status = wait_relaying(&mut child, "rsync", log)
        .await
        .map_err(PlaceError::RsyncSpawn)?;
    if !status.success() {
        return Err(PlaceError::RsyncFailed {
            dest: dest.to_path_buf(),
            status,
        });
    }
    durability.sync_filesystem(dest, log)?;
    Ok(())
}

fn with_slash(path: &Path) -> std::ffi::OsString {
    let mut s = path.as_os_str().to_os_string();
    if !s.as_encoded_bytes().ends_with(b"/") {
        s.push("/");
    }
    s
}

/// Renames the staged tree onto `dest` in one step. rename(2) replaces an empty directory
/// atomically and refuses a non-empty one, which is exactly the contract of `mv`. The tree is on
/// disk before the rename, and the rename is before this returns.
pub fn mv(
    staged: Staged,
    dest: &Path,
    durability: Durability,
    log: &RunLog,
) -> Result<(), PlaceError> {
    if let Ok(mut entries) = std::fs::read_dir(dest) {
        if entries.next().is_some() {
            return Err(PlaceError::NotEmpty(dest.to_path_buf()));
        }
    }
    // On error the staged tree is dropped (and deleted) here, as on every failure before the rename.
    durability.sync_filesystem(staged.path(), log)?;
    // From here the tree is ours to move: the temp dir must not delete it on drop.
    let tree = staged.dir.keep();
    log.line(format!("mv {} to {}", tree.display(), dest.display()));
    std::fs::rename(&tree, dest).map_err(|source| {
        let _ = std::fs::remove_dir_all(&tree);
        match source.raw_os_error() {
            Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => PlaceError::NotEmpty(dest.to_path_buf()),
            _ => PlaceError::Rename {
                dest: dest.to_path_buf(),
                source,
            },
        }
    })?;
    durability.sync_parent(dest)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_parent_is_named() {
        let err = staging_parent(Path::new("/nonexistent-cutover/x/app")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-cutover/x"), "{err}");
        assert_eq!(
            staging_parent(Path::new("app")).expect("cwd"),
            PathBuf::from(".")
        );
    }

    #[test]
    fn with_slash_adds_one_slash() {
        assert_eq!(with_slash(Path::new("/a/b")), "/a/b/");
        assert_eq!(with_slash(Path::new("/a/b/")), "/a/b/");
    }
}
