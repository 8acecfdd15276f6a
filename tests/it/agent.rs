//! The agent end to end: stretcher's own suite ported, inputs, hooks, placing files, bad input.
//!
//! Every test drives the real binary with stdin piped, inside a `Site`: a temp directory holding
//! the archives, manifests, `dest`, the state directory and the agent's start directory.

mod bad;
mod examples;
mod fetch;
mod hooks;
mod input;
mod json_log;
mod limits;
mod lock;
mod place;
mod signed;
mod stage;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

use crate::support;

/// One entry of a test archive.
#[derive(Debug, Clone)]
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str, u32),
    /// A raw path written as is, for hostile archives (`../x`, `/etc/x`).
    Raw(&'a str, &'a [u8]),
    /// A symbolic link `path` → `target`.
    Symlink(&'a str, &'a str),
}

/// A scratch deployment site: everything a test touches lives under one temp dir.
pub struct Site {
    dir: tempfile::TempDir,
}

/// What one agent run did.
pub struct Run {
    pub output: Output,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    /// Asserts the exit code, printing the agent's output when it differs.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code(),
            Some(code),
            "exit code\n--- stderr:\n{}\n--- stdout:\n{}",
            self.stderr(),
            self.stdout()
        );
        self
    }
    #[track_caller]
    pub fn expect_stderr(&self, needle: &str) -> &Run {
        assert!(
            self.stderr().contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr()
        );
        self
    }
}

impl Site {
    pub fn new() -> Site {
        let site = Site {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for sub in ["cwd", "state", "archives"] {
            std::fs::create_dir(site.path(sub)).expect("site dir");
        }
        site
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Where deploys go by default.
    pub fn dest(&self) -> PathBuf {
        self.path("dest")
    }

    /// Makes `dest` hold one file, `name` with `content`, as a live deploy would; returns its
    /// snapshot, for checking that a failed deploy left it untouched.
    pub fn existing_dest(&self, name: &str, content: &str) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
        std::fs::create_dir_all(self.dest()).expect("dest");
        std::fs::write(self.dest().join(name), content).expect("a file in dest");
        snapshot(&self.dest())
    }

    /// After a failed deploy: `dest` is as it was (`before`) and the failure hooks ran (they
    /// `touch failure-ran`); `what` names the case.
    #[track_caller]
    pub fn assert_failed_cleanly(&self, before: &BTreeMap<PathBuf, (u32, Vec<u8>)>, what: &str) {
        assert_eq!(&snapshot(&self.dest()), before, "{what}: dest untouched");
        assert!(
            self.path("cwd/failure-ran").exists(),
            "{what}: failure hooks run"
        );
    }

    /// Writes a tar.gz of `entries` under archives/ and returns its `file://` URL and sha256.
    /// A `root_mode` adds a `./` entry with that mode first, as `tar -C dir .` archives have.
    pub fn archive(
        &self,
        name: &str,
        root_mode: Option<u32>,
        entries: &[Entry],
    ) -> (String, String) {
        let bytes = tar_gz(root_mode, entries);
        let path = self.path("archives").join(name);
        std::fs::write(&path, &bytes).expect("write archive");
        (format!("file://{}", path.display()), sha256_hex(&bytes))
    }

    /// Writes a manifest (with `@DEST@` and `@SITE@` substituted) and returns its `file://` URL.
    pub fn manifest(&self, name: &str, yaml: &str) -> String {
        let yaml = yaml
            .replace("@DEST@", &self.dest().display().to_string())
            .replace("@SITE@", &self.dir.path().display().to_string());
        let path = self.path(name);
        std::fs::write(&path, yaml).expect("write manifest");
        format!("file://{}", path.display())
    }

    /// The real binary, started in cwd/ with this site's state dir.
    pub fn agent(&self) -> Command {
        let mut cmd = support::cutover();
        cmd.current_dir(self.path("cwd"))
            .env("CUTOVER_STATE_DIR", self.path("state"))
            .env("CUTOVER_SOCKET", self.path("state/none.sock"));
        cmd
    }

    /// Runs the agent with `stdin` and `args` and waits for it.
    pub fn run(&self, stdin: &str, args: &[&str]) -> Run {
        self.run_with(self.agent().args(args), stdin)
    }

    pub fn run_with(&self, cmd: &mut Command, stdin: &str) -> Run {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cutover");
        let mut pipe = child.stdin.take().expect("stdin");
        let text = stdin.to_owned();
        // From a thread: the agent may exit before reading, and the pipe must not block the test.
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(text.as_bytes());
        });
        let output = child.wait_with_output().expect("wait cutover");
        let _ = writer.join();
        Run { output }
    }

    /// A standard rsync deploy of `entries` with extra manifest lines; returns the manifest URL.
    pub fn deploy_manifest(&self, extra: &str, entries: &[Entry]) -> String {
        self.deploy_manifest_to("@DEST@", None, extra, entries)
    }

    /// [`Site::deploy_manifest`] to `dest`, the archive with a `./` entry of `root_mode` if given.
    pub fn deploy_manifest_to(
        &self,
        dest: &str,
        root_mode: Option<u32>,
        extra: &str,
        entries: &[Entry],
    ) -> String {
        let (src, sum) = self.archive("app.tar.gz", root_mode, entries);
        self.manifest(
            "manifest.yml",
            &format!("src: {src}\nchecksum: {sum}\ndest: {dest}\n{extra}"),
        )
    }
}

pub fn tar_gz(root_mode: Option<u32>, entries: &[Entry]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h
    };
    if let Some(mode) = root_mode {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, "./", std::io::empty())
            .expect("tar ./");
    }
    for entry in entries {
        match entry {
            Entry::File(path, data) => {
                let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
                tar.append_data(&mut h, path, *data).expect("tar file");
            }
            Entry::Dir(path, mode) => {
                let mut h = header(tar::EntryType::Directory, *mode, 0);
                tar.append_data(&mut h, path, std::io::empty())
                    .expect("tar dir");
            }
            Entry::Symlink(path, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                tar.append_link(&mut h, path, target).expect("tar symlink");
            }
            Entry::Raw(path, data) => {
                // tar::Builder refuses `..` and absolute paths: write the name field by hand.
                let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
                let name = &mut h.as_old_mut().name;
                name[..path.len()].copy_from_slice(path.as_bytes());
                h.set_cksum();
                tar.append(&h, *data).expect("tar raw");
            }
        }
    }
    tar.into_inner()
        .expect("tar finish")
        .finish()
        .expect("gzip finish")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every path under `root` with its mode and content: equal snapshots mean an untouched tree.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let Ok(meta) = std::fs::symlink_metadata(root) else {
        return out;
    };
    out.insert(PathBuf::new(), (meta.permissions().mode(), Vec::new()));
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            let content = if meta.is_file() {
                std::fs::read(&path).expect("read")
            } else {
                Vec::new()
            };
            out.insert(rel, (meta.permissions().mode(), content));
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

pub fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
