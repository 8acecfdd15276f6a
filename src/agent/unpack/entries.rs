//! Writing checked entries into the staging root: the one place that decides whether a path or
//! a link target stays inside it, and that creates files, directories and links.
//!
//! Paths are judged lexically, before anything touches the disk: no `..`, no absolute path, no
//! link whose target climbs out of the root. Since no escaping link is ever created, every path
//! written below the root resolves inside it. Files are created with `O_EXCL` after removing
//! whatever was there, so a later entry never writes *through* an earlier one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

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
pub fn link_stays_inside(entry: &Path, target: &Path) -> bool {
    let mut depth = entry.parent().map_or(0, |p| p.components().count());
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
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
    entries: u64,
    buf: Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(root: &'a Path, url: &'a str) -> Writer<'a> {
        Writer {
            root,
            url,
            dirs: Vec::new(),
            root_mode: None,
            entries: 0,
            buf: vec![0; 256 * 1024],
        }
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
        rel: &Path,
        mode: u32,
        mtime: Option<SystemTime>,
    ) -> Result<(), UnpackError> {
        self.entries += 1;
        if rel.as_os_str().is_empty() {
            // The archive's `./`: the agent applies `dest_mode` over it later.
            self.root_mode = Some(mode & KEPT_BITS);
            return Ok(());
        }
        let path = self.root.join(rel);
        fs::create_dir_all(&path).map_err(|e| self.write_error(&path, e))?;
        self.dirs.push((path, mode & KEPT_BITS, mtime));
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
        self.entries += 1;
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
            let why = format!("link target '{}' escapes the destination", target.display());
            return Err(self.refuse(name, why));
        }
        self.entries += 1;
        let path = self.prepare(name, rel)?;
        std::os::unix::fs::symlink(target, &path).map_err(|e| self.write_error(&path, e))?;
        if let Some(mtime) = mtime {
            set_link_mtime(&path, mtime);
        }
        Ok(())
    }

    /// A hard link to an earlier entry; `target` is a path in the archive, not relative to `rel`.
    pub fn hardlink(&mut self, name: &str, rel: &Path, target: &Path) -> Result<(), UnpackError> {
        let target_rel = safe_relative(target).map_err(|_| {
            let why = format!("link target '{}' escapes the destination", target.display());
            self.refuse(name, why)
        })?;
        self.entries += 1;
        let path = self.prepare(name, rel)?;
        let source = self.root.join(target_rel);
        fs::hard_link(&source, &path).map_err(|e| self.write_error(&path, e))
    }

    /// Creates the parent directories of `rel` and clears whatever non-directory is in its way.
    fn prepare(&self, name: &str, rel: &Path) -> Result<PathBuf, UnpackError> {
        if rel.as_os_str().is_empty() {
            return Err(self.refuse(name, "only a directory can be the archive's root"));
        }
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| self.write_error(parent, e))?;
        }
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

    /// Applies directory modes and mtimes, deepest first; returns (entries, root mode).
    pub fn finish(mut self) -> Result<(u64, Option<u32>), UnpackError> {
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
        Ok((self.entries, self.root_mode))
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
    }
}
