//! Writing checked entries into the staging root: the one place that decides whether a path or
//! a link target stays inside it, and that creates files, directories and links.
//!
//! Paths are judged lexically, before anything touches the disk: no `..`, no absolute path, no
//! link whose target climbs out of the root. Entries are never written through a link (every
//! directory on their path must be a real one), and a link's `..` only counts before its first
//! name, so no link resolves outside the root and every path written below it stays inside.
//! Files are created with `O_EXCL` after removing whatever was there, so a later entry never
//! writes *through* an earlier one. Every byte and every inode is counted by the [`Budget`]
//! before it is written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::budget::Budget;
use super::UnpackError;

/// Permission bits kept from an archive: setuid, setgid and sticky are dropped.
const KEPT_BITS: u32 = 0o777;

/// Why a path is refused, for the "refusing archive entry" message.
pub const ESCAPES: &str = "path escapes the destination";

/// `path` as a clean relative path below the root (`""` for the root itself).
pub fn safe_relative(path: &Path) -> Result<PathBuf, &'static str> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ESCAPES)
            }
        }
    }
    Ok(clean)
}

/// Whether a symlink at `entry` (clean, relative) pointing to `target` resolves inside the root.
///
/// `..` is only taken before the first name: the kernel resolves `a/..` from wherever `a` leads,
/// so after a name that may be another link, counting depth would no longer say where it lands.
/// With leading `..` only, and entries never written through a link, every link resolves inside.
pub fn link_stays_inside(entry: &Path, target: &Path) -> bool {
    let mut depth = entry.parent().map_or(0, |p| p.components().count());
    let mut named = false;
    for component in target.components() {
        match component {
            Component::Normal(_) => {
                depth += 1;
                named = true;
            }
            Component::CurDir => {}
            Component::ParentDir if depth > 0 && !named => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Writes entries below `root` and remembers directory metadata to apply at the end.
#[derive(Debug)]
pub struct Writer<'a> {
    root: &'a Path,
    url: &'a str,
    /// Directories get their mode and mtime last: a read-only directory must still accept its
    /// children, and writing a child would bump the directory's mtime.
    dirs: Vec<(PathBuf, u32, Option<SystemTime>)>,
    root_mode: Option<u32>,
    budget: Budget<'a>,
    /// The directory (relative) [`Writer::real_dirs`] checked last.
    checked: PathBuf,
    buf: Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(root: &'a Path, url: &'a str, budget: Budget<'a>) -> Writer<'a> {
        Writer {
            root,
            url,
            dirs: Vec::new(),
            root_mode: None,
            budget,
            checked: PathBuf::new(),
            buf: vec![0; 256 * 1024],
        }
    }

    /// What this unpack may still write (the zip spool and the tar reader count against it).
    pub fn budget(&mut self) -> &mut Budget<'a> {
        &mut self.budget
    }

    pub fn url(&self) -> &str {
        self.url
    }

    /// The directory that holds the staging root (same filesystem), for spool files.
    pub fn spool_dir(&self) -> &Path {
        self.root.parent().unwrap_or(self.root)
    }

    pub fn refuse(&self, entry: &str, why: impl Into<String>) -> UnpackError {
        UnpackError::Refused {
            url: self.url.to_owned(),
            entry: entry.to_owned(),
            why: why.into(),
        }
    }

    pub fn corrupt(&self, e: &dyn std::fmt::Display) -> UnpackError {
        super::corrupt(self.url, e)
    }

    fn write_error(&self, path: &Path, source: io::Error) -> UnpackError {
        UnpackError::Write {
            url: self.url.to_owned(),
            path: path.to_owned(),
            source,
        }
    }

    /// The clean relative path of entry `name`, or the refusal.
    pub fn check(&self, name: &str, path: &Path) -> Result<PathBuf, UnpackError> {
        safe_relative(path).map_err(|why| self.refuse(name, why))
    }

    pub fn dir(
        &mut self,
        name: &str,
        rel: &Path,
        mode: u32,
        mtime: Option<SystemTime>,
    ) -> Result<(), UnpackError> {
        if rel.as_os_str().is_empty() {
            self.budget.take_entries(1)?;
            // The archive's `./`: the agent applies `dest_mode` over it later.
            self.root_mode = Some(mode & KEPT_BITS);
            return Ok(());
        }
        // A directory the archive already implied counts once more: it is an entry of its own.
        if self.real_dirs(name, rel)? == 0 {
            self.budget.take_entries(1)?;
        }
        self.dirs
            .push((self.root.join(rel), mode & KEPT_BITS, mtime));
        Ok(())
    }

    /// Writes a regular file from `data`; read errors mean a corrupt archive, write errors a
    /// full or read-only disk, and the two get different messages.
    pub fn file(
        &mut self,
        name: &str,
        rel: &Path,
        data: &mut dyn Read,
        mode: u32,
        mtime: Option<SystemTime>,
    ) -> Result<(), UnpackError> {
        self.budget.take_entries(1)?;
        let path = self.prepare(name, rel)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| self.write_error(&path, e))?;
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.corrupt(&e)),
            };
            self.budget.take_bytes(n as u64)?;
            if let Err(e) = file.write_all(&self.buf[..n]) {
                return Err(self.write_error(&path, e));
            }
        }
        let perms = fs::Permissions::from_mode(mode & KEPT_BITS);
        file.set_permissions(perms)
            .map_err(|e| self.write_error(&path, e))?;
        if let Some(mtime) = mtime {
            file.set_modified(mtime)
                .map_err(|e| self.write_error(&path, e))?;
        }
        Ok(())
    }

    pub fn symlink(
        &mut self,
        name: &str,
        rel: &Path,
        target: &Path,
        mtime: Option<SystemTime>,
    ) -> Result<(), UnpackError> {
        if !link_stays_inside(rel, target) {
            let why = format!(
                "link target '{}' escapes the destination ('..' is only followed at its start)",
                target.display()
            );
            return Err(self.refuse(name, why));
        }
        self.budget.take_entries(1)?;
        let path = self.prepare(name, rel)?;
        std::os::unix::fs::symlink(target, &path).map_err(|e| self.write_error(&path, e))?;
        if let Some(mtime) = mtime {
            set_link_mtime(&path, mtime);
        }
        Ok(())
    }

    /// A hard link to an earlier entry; `target` is a path in the archive, not relative to `rel`.
    pub fn hardlink(&mut self, name: &str, rel: &Path, target: &Path) -> Result<(), UnpackError> {
        let escapes = || format!("link target '{}' escapes the destination", target.display());
        let target_rel = safe_relative(target).map_err(|_| self.refuse(name, escapes()))?;
        // Its directories are looked at as an entry's own are: through a link they could be
        // anywhere. A symlink is not linked to: at another place its target means another path.
        if let Some(parent) = target_rel.parent() {
            self.real_dirs(name, parent)?;
        }
        let source = self.root.join(&target_rel);
        if fs::symlink_metadata(&source).is_ok_and(|meta| meta.is_symlink()) {
            return Err(self.refuse(name, "a hard link to a symbolic link"));
        }
        self.budget.take_entries(1)?;
        let path = self.prepare(name, rel)?;
        fs::hard_link(&source, &path).map_err(|e| self.write_error(&path, e))
    }

    /// Creates the parent directories of `rel` and clears whatever non-directory is in its way.
    fn prepare(&mut self, name: &str, rel: &Path) -> Result<PathBuf, UnpackError> {
        if rel.as_os_str().is_empty() {
            return Err(self.refuse(name, "only a directory can be the archive's root"));
        }
        if let Some(parent) = rel.parent() {
            self.real_dirs(name, parent)?;
        }
        let path = self.root.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                Err(self.refuse(name, "a non-directory entry would replace a directory"))
            }
            Ok(_) => fs::remove_file(&path)
                .map(|()| path.clone())
                .map_err(|e| self.write_error(&path, e)),
            Err(_) => Ok(path),
        }
    }

    /// Makes every component of `dir` (clean, relative) a real directory below the root and
    /// returns how many it created, each counted as an entry (one entry `a/b/…/z/f` takes as
    /// many inodes as its path has components). A path through a link or a file is refused: a
    /// link made by an earlier entry (`l -> ..`, inside) would lead a later one (`l/b/x`)
    /// elsewhere, and links judged from a place they do not really live in could escape.
    fn real_dirs(&mut self, name: &str, dir: &Path) -> Result<u64, UnpackError> {
        // Entries come grouped by directory, and a directory once checked stays one (nothing
        // replaces a directory): the last one checked, and its ancestors, need no second look.
        if self.checked.starts_with(dir) {
            return Ok(0);
        }
        let mut created = 0;
        let mut at = self.root.to_path_buf();
        for component in dir.components() {
            at.push(component);
            match fs::symlink_metadata(&at) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    let rel = at.strip_prefix(self.root).unwrap_or(&at);
                    let why = format!(
                        "its path goes through '{}', which is not a directory",
                        rel.display()
                    );
                    return Err(self.refuse(name, why));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.budget.take_entries(1)?;
                    fs::create_dir(&at).map_err(|e| self.write_error(&at, e))?;
                    created += 1;
                }
                Err(e) => return Err(self.write_error(&at, e)),
            }
        }
        self.checked = dir.to_path_buf();
        Ok(created)
    }

    /// Applies directory modes and mtimes, deepest first; returns (entries, root mode).
    pub fn finish(mut self) -> Result<(u64, Option<u32>), UnpackError> {
        // The last look at the reserves: up to 16 MiB or 1024 entries went since the one before.
        self.budget.check_free()?;
        self.dirs
            .sort_by_key(|(path, ..)| std::cmp::Reverse(path.components().count()));
        for (path, mode, mtime) in &self.dirs {
            let dir = File::open(path).map_err(|e| self.write_error(path, e))?;
            if let Some(mtime) = mtime {
                dir.set_modified(*mtime)
                    .map_err(|e| self.write_error(path, e))?;
            }
            dir.set_permissions(fs::Permissions::from_mode(*mode))
                .map_err(|e| self.write_error(path, e))?;
        }
        Ok((self.budget.entries(), self.root_mode))
    }
}

/// An archive's mtime (seconds since the epoch) as a time.
pub fn mtime_from_secs(secs: u64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Best effort: a link's own mtime matters to nobody's correctness, only to tidy listings.
fn set_link_mtime(path: &Path, mtime: SystemTime) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let Ok(since_epoch) = mtime.duration_since(SystemTime::UNIX_EPOCH) else {
        return;
    };
    let at = TimeSpec::from_duration(since_epoch);
    let _ = utimensat(None, path, &at, &at, UtimensatFlags::NoFollowSymlink);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths_stay_and_climbing_ones_are_refused() {
        assert_eq!(
            safe_relative(Path::new("./a/./b")).unwrap(),
            Path::new("a/b")
        );
        assert_eq!(safe_relative(Path::new("./")).unwrap(), Path::new(""));
        assert!(safe_relative(Path::new("a/../../x")).is_err());
        assert!(safe_relative(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn link_targets_are_judged_from_the_link_directory() {
        assert!(link_stays_inside(
            Path::new("a/b/link"),
            Path::new("../../c")
        ));
        assert!(link_stays_inside(Path::new("link"), Path::new("./c/d")));
        assert!(!link_stays_inside(
            Path::new("a/link"),
            Path::new("../../c")
        ));
        assert!(!link_stays_inside(Path::new("link"), Path::new("/etc")));
        assert!(!link_stays_inside(
            Path::new("a/link"),
            Path::new("b/../../..")
        ));
        // `b` may be a link itself: `..` after it is not followed, even when it stays inside.
        assert!(!link_stays_inside(
            Path::new("a/b/link"),
            Path::new("c/../d")
        ));
    }
}
