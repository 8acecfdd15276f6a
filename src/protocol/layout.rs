//! The on-disk layout of an app's home (`dest`), shared by the agent that fills it and the
//! supervisor that runs from it.
//!
//! ```text
//! dest/releases/<version>/   one unpacked release each, never changed once in place
//! dest/current -> releases/<version>   swapped by rename when a release goes live
//! dest/shared/<entry>        linked into every release (logs, pids, uploads)
//! dest/.staging/             where the agent unpacks before renaming into releases/
//! ```

use std::path::{Path, PathBuf};

pub fn releases_dir(dest: &Path) -> PathBuf {
    dest.join("releases")
}

pub fn release_dir(dest: &Path, version: &str) -> PathBuf {
    releases_dir(dest).join(version)
}

pub fn current_link(dest: &Path) -> PathBuf {
    dest.join("current")
}

pub fn shared_dir(dest: &Path) -> PathBuf {
    dest.join("shared")
}

pub fn staging_dir(dest: &Path) -> PathBuf {
    dest.join(".staging")
}

/// Whether `version` is safe as a single directory name (no separators, no `..`, not hidden).
pub fn valid_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 128
        && !version.starts_with('.')
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
}
