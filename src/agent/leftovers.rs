//! Staging leftovers of a killed agent: a staging directory is named after its `dest`
//! (`.cutover-staging-<12 hex digits of the dest's key>-<random>`), and the next deploy to that
//! dest removes those of earlier runs before it stages its own.
//!
//! The sweep runs under the dest lock (`lock`), which every agent holds for as long as its
//! staging directory exists: a staging directory of this dest's name is therefore a dead agent's,
//! never a live one's. Staging directories of other dests sharing the parent are left alone, as
//! their agents may be running.

use std::path::{Path, PathBuf};

use super::lock;
use super::log::RunLog;
use super::pipeline::STAGING_PREFIX;

/// How many hex digits of the dest's key name its staging directories.
const KEY_DIGITS: usize = 12;

/// The name every staging directory of a deploy to `dest` starts with.
pub fn staging_prefix(dest: &Path) -> String {
    format!("{STAGING_PREFIX}{}-", &lock::dest_key(dest)[..KEY_DIGITS])
}

/// Removes the directories in `parent` whose names start with `prefix`; says so in the log. A
/// leftover that cannot be removed costs space, not correctness: it is said and left.
pub fn sweep(parent: &Path, prefix: &str, log: &RunLog) {
    for dir in leftovers(parent, prefix) {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => log.line(format!(
                "removed {}, the staging directory of an earlier deploy to this dest that did not finish",
                dir.display()
            )),
            Err(err) => log.warning(format!(
                "could not remove the leftover staging directory {}: {err}; remove it by hand",
                dir.display()
            )),
        }
    }
}

/// Directories (never symlinks) directly in `parent` named `prefix…`.
fn leftovers(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_dests_leftovers_go() {
        let parent = tempfile::tempdir().unwrap();
        let ours = staging_prefix(&parent.path().join("app"));
        let theirs = staging_prefix(&parent.path().join("other"));
        assert_ne!(ours, theirs);
        assert!(ours.starts_with(".cutover-staging-"), "{ours}");
        for name in [format!("{ours}a1"), format!("{theirs}b2")] {
            std::fs::create_dir_all(parent.path().join(name).join("sub")).unwrap();
        }
        // A file or a symlink of that name is not a staging directory.
        std::fs::write(parent.path().join(format!("{ours}file")), "x").unwrap();
        let log = RunLog::quiet(1 << 16);
        sweep(parent.path(), &ours, &log);
        assert!(!parent.path().join(format!("{ours}a1")).exists());
        assert!(parent.path().join(format!("{theirs}b2")).exists());
        assert!(parent.path().join(format!("{ours}file")).exists());
        assert!(
            log.contents().contains("did not finish"),
            "{}",
            log.contents()
        );
    }
}
