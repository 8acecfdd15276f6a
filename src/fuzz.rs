//! Entry points for the fuzz targets in `tests/fuzz/` (cargo-fuzz): one function per target,
//! named as it, that feeds arbitrary bytes to a parser that reads input from outside and checks
//! what must hold whatever the input. Not an API: hidden from the docs, used by the fuzz crate
//! and by the regression tests of what it found.
//!
//! A new target adds a function here and a file in `tests/fuzz/fuzz_targets/` that calls it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::agent::limits::Limits;
use crate::agent::{manifest, template, unpack as unpacker};

/// `response_head`: an instance's answer, head and body, as the proxy reads it; the checks are
/// the proxy's own (`supervisor::proxy::fuzz`).
pub fn response_head(data: &[u8]) {
    crate::supervisor::proxy::fuzz::response(data);
}

/// `chunk_decoder`: any bytes as a chunked body, as the proxy decodes it.
pub fn chunk_decoder(data: &[u8]) {
    crate::supervisor::proxy::fuzz::chunks(data);
}

/// The variables the manifest and template targets see: set, empty, and long.
fn lookup(name: &str) -> Option<String> {
    match name {
        "A" => Some("a".to_owned()),
        "EMPTY" => Some(String::new()),
        "LONG" => Some("x".repeat(4096)),
        _ => None,
    }
}

/// `manifest`: the agent's manifest path, template rendering included.
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = manifest::parse(text, &lookup);
    }
}

/// `template`: the Go-template subset alone; text without an action renders as itself.
pub fn template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rendered = template::render(text, &lookup);
    if !text.contains("{{") {
        assert_eq!(
            rendered.as_deref(),
            Ok(text),
            "text without actions changed"
        );
    }
}

/// The limits of the `unpack` target: small enough that an iteration stays fast.
pub fn unpack_limits() -> Limits {
    Limits {
        max_src_size: u64::MAX,
        max_unpacked_size: 16 << 20,
        max_entries: 1000,
        min_free_space: 0,
        min_free_inodes: 0,
    }
}

/// `unpack`: `data` as an archive unpacked into a staging directory made in `scratch`; whatever
/// the outcome, nothing may appear beside the staging directory, no link in it may resolve
/// outside it and no file in it may be a hard link to a file outside it.
pub fn unpack(data: &[u8], scratch: &Path) {
    let parent = tempfile::tempdir_in(scratch).expect("a temp dir for the fuzz target");
    let root = parent.path().join("staging");
    std::fs::create_dir(&root).expect("the staging dir");
    let _ = unpacker::unpack(data, &root, "fuzz://input", unpack_limits());
    let beside: Vec<_> = std::fs::read_dir(parent.path())
        .expect("read the temp dir")
        .map(|entry| entry.expect("dir entry").file_name())
        .collect();
    assert_eq!(
        beside,
        [OsString::from("staging")],
        "written beside the root"
    );
    let mut links = HashMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("dir entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let rel = path.strip_prefix(&root).expect("below the root");
            if meta.is_symlink() {
                assert!(
                    resolves_inside(&root, rel),
                    "{} leads outside",
                    rel.display()
                );
            } else if meta.is_dir() {
                dirs.push(path);
            } else if meta.nlink() > 1 {
                links.entry(meta.ino()).or_insert((meta.nlink(), 0)).1 += 1;
            }
        }
    }
    for (nlink, seen) in links.values() {
        assert_eq!(nlink, seen, "a file hard-linked to one outside the root");
    }
    // Read-only directories from the archive would keep the temp dir from being removed.
    make_writable(&root);
}

/// Resolves the link at `rel` as the kernel would, following links below `root`; `false` when
/// the path climbs above `root` on the way. A missing component is taken as a directory.
fn resolves_inside(root: &Path, rel: &Path) -> bool {
    let mut at: Vec<OsString> = match rel.parent() {
        Some(parent) => parent.iter().map(OsString::from).collect(),
        None => Vec::new(),
    };
    let mut pending: Vec<PathBuf> = vec![read_link(root, rel)];
    let mut hops = 0;
    while let Some(path) = pending.pop() {
        let mut components = path.components();
        let Some(component) = components.next() else {
            continue;
        };
        pending.push(components.as_path().to_path_buf());
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if at.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
            Component::Normal(name) => {
                at.push(name.to_owned());
                let here: PathBuf = at.iter().collect();
                let is_link =
                    std::fs::symlink_metadata(root.join(&here)).is_ok_and(|meta| meta.is_symlink());
                if is_link {
                    hops += 1;
                    if hops > 40 {
                        // The kernel gives up too (ELOOP): such a link leads nowhere.
                        return true;
                    }
                    at.pop();
                    pending.push(read_link(root, &here));
                }
            }
        }
    }
    true
}

fn read_link(root: &Path, rel: &Path) -> PathBuf {
    std::fs::read_link(root.join(rel)).expect("read a link")
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                make_writable(&entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_followed_where_they_really_lead() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        std::fs::create_dir(root.join("a")).expect("a");
        std::os::unix::fs::symlink("..", root.join("a/l")).expect("a/l");
        std::os::unix::fs::symlink("a/l/..", root.join("x")).expect("x");
        std::os::unix::fs::symlink("a/l/a", root.join("y")).expect("y");
        assert!(resolves_inside(root, Path::new("a/l")));
        assert!(resolves_inside(root, Path::new("y")));
        // `a/l` is the root itself, so `a/l/..` is the root's parent.
        assert!(!resolves_inside(root, Path::new("x")));
    }

    #[test]
    fn the_unpack_target_takes_any_bytes() {
        let scratch = tempfile::tempdir().expect("temp dir");
        for data in [&b""[..], b"PK\x03\x04", &[0x1f, 0x8b, 8, 0], &[0; 1024]] {
            unpack(data, scratch.path());
        }
    }
}
