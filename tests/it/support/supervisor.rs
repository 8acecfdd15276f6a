//! A real supervisor in a temp dir (`cutover supervise`), stopped on drop, and release builders
//! whose app is the bundled demo app (`cutover demo-app`).
//!
//! Drop stops every app through the CLI, kills the supervisor, and as a last resort kills the
//! process groups recorded in the state file, so no test leaves an app process behind, even one
//! that panicked after a `kill9()`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{cutover, cutover_bin, wait_until};

/// How long a supervisor may take to start listening on a loaded CI box.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A `cutover supervise` child process with its own state dir and socket.
pub struct Supervisor {
    /// Holds `state/`, `s.sock` and `supervisor.log`; removed on drop.
    pub dir: tempfile::TempDir,
    socket: PathBuf,
    child: Option<Child>,
}

impl Supervisor {
    /// Starts a supervisor in a fresh temp dir and waits until its socket accepts connections.
    pub fn start() -> Supervisor {
        Supervisor::start_at(|dir| dir.join("s.sock"))
    }

    /// Starts a supervisor whose socket is `socket(temp dir)`, e.g. in a directory still to create.
    pub fn start_at(socket: impl FnOnce(&Path) -> PathBuf) -> Supervisor {
        let dir = tempfile::tempdir().expect("temp dir for the supervisor");
        let socket = socket(dir.path());
        let mut sup = Supervisor {
            dir,
            socket,
            child: None,
        };
        sup.spawn();
        sup
    }

    pub fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("supervisor.log")
    }

    /// Everything the supervisor wrote to stderr so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Pid of the running supervisor process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("supervisor is running").id()
    }

    /// The real binary, pointed at this supervisor's socket and state dir.
    pub fn cli(&self) -> Command {
        let mut cmd = cutover();
        cmd.env("CUTOVER_SOCKET", self.socket())
            .env("CUTOVER_STATE_DIR", self.state_dir());
        cmd
    }

    /// Runs `cutover ARGS` against this supervisor and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cli().args(args).output().expect("run cutover")
    }

    /// Deploys `manifest` with the agent (`cutover apply PATH`) and returns its output.
    pub fn apply(&self, manifest: &Path) -> Output {
        self.cli()
            .arg("apply")
            .arg(manifest)
            .output()
            .expect("run cutover apply")
    }

    /// `cutover status APP --json`, parsed; panics with the CLI's stderr when it fails.
    pub fn status_json(&self, app: &str) -> serde_json::Value {
        let out = self.run(&["status", app, "--json"]);
        assert!(
            out.status.success(),
            "cutover status {app} failed: {}\nsupervisor log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// Kills the supervisor with SIGKILL (its apps keep running) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the supervisor if it runs (SIGTERM, a clean shutdown) and starts it again on the
    /// same state dir and socket.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the supervisor log");
        let _ = writeln!(log, "---- test harness: starting cutover supervise");
        let child = cutover()
            .arg("supervise")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(self.socket())
            .env("RUST_LOG", "cutover=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log file"))
            .stderr(log)
            .spawn()
            .expect("spawn cutover supervise");
        self.child = Some(child);
        let socket = self.socket();
        wait_until(
            "the supervisor to accept on its socket",
            START_DEADLINE,
            || {
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!("cutover supervise exited with {status}:\n{}", self.log());
                }
                UnixStream::connect(&socket).is_ok()
            },
        );
    }

    /// Names of the apps the supervisor runs, when it answers.
    fn apps(&self) -> Vec<String> {
        let Ok(out) = self.cli().args(["status", "--json"]).output() else {
            return Vec::new();
        };
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        report["apps"]
            .as_array()
            .map(|apps| {
                apps.iter()
                    .filter_map(|a| a["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Process groups of instances recorded in any JSON file of the state dir.
    fn recorded_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.state_dir()) else {
            return pids;
        };
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                collect_pids(&value, &mut pids);
            }
        }
        pids
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- supervisor log ({}):\n{}",
                self.log_path().display(),
                self.log()
            );
        }
        if self.child.is_some() {
            for app in self.apps() {
                let _ = self.cli().args(["stop", &app]).output();
            }
        }
        let recorded = self.recorded_pids();
        self.kill9();
        for pid in recorded {
            let pid = nix::unistd::Pid::from_raw(pid);
            // Only a process that still leads its own group is one of our instances; anything
            // else is a reused pid and none of our business.
            if nix::unistd::getpgid(Some(pid)) == Ok(pid) {
                let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

fn collect_pids(value: &serde_json::Value, out: &mut Vec<i32>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value.as_i64() {
                    Some(pid) if key == "pid" && pid > 1 => out.push(pid as i32),
                    _ => collect_pids(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_pids(v, out)),
        _ => {}
    }
}

/// A release of the demo app and the manifest that deploys it.
#[derive(Debug, Clone)]
pub struct DemoRelease {
    pub name: String,
    pub version: String,
    /// The public port the proxy owns (on 127.0.0.1).
    pub listen: u16,
    pub instances: u32,
    /// Extra `cutover demo-app` flags (`--fail-boot`, `--never-healthy`, `--crash-after 1`, …).
    pub flags: Vec<String>,
    /// Extra lines for the `app:` section, unindented (`drain_timeout: 2s`).
    pub app_lines: Vec<String>,
}

impl DemoRelease {
    /// One instance, checked on `/healthz` every 100 ms, a 20 s health deadline.
    pub fn new(name: &str, version: &str, listen: u16) -> DemoRelease {
        DemoRelease {
            name: name.to_owned(),
            version: version.to_owned(),
            listen,
            instances: 1,
            flags: Vec::new(),
            app_lines: Vec::new(),
        }
    }

    pub fn instances(mut self, n: u32) -> DemoRelease {
        self.instances = n;
        self
    }

    pub fn flag(mut self, flag: &str) -> DemoRelease {
        self.flags.push(flag.to_owned());
        self
    }

    pub fn app_line(mut self, line: &str) -> DemoRelease {
        self.app_lines.push(line.to_owned());
        self
    }

    /// Writes `NAME-VERSION.tar.gz` (a `VERSION` file and a `log/` dir) and `NAME-VERSION.yml`
    /// into `dir`, deploying to `dest`; returns the manifest's path.
    pub fn write_manifest(&self, dir: &Path, dest: &Path) -> PathBuf {
        let stem = format!("{}-{}", self.name, self.version);
        let archive = dir.join(format!("{stem}.tar.gz"));
        let bytes = demo_archive(&self.version);
        std::fs::write(&archive, &bytes).expect("write the release archive");
        let checksum = hex::encode(Sha256::digest(&bytes));

        let mut run = format!("{} demo-app --port {{port}}", cutover_bin().display());
        for flag in &self.flags {
            run.push(' ');
            run.push_str(flag);
        }
        let mut manifest = format!(
            "src: file://{archive}\nchecksum: {checksum}\ndest: {dest}\napp:\n  name: {name}\n  \
             version: \"{version}\"\n  run: \"{run}\"\n  listen: 127.0.0.1:{listen}\n  \
             instances: {instances}\n  env: {{ DEMO_VERSION: \"{version}\" }}\n  \
             health: {{ path: /healthz, interval: 100ms, timeout: 1s, healthy: 2, deadline: 20s }}\n  \
             drain_timeout: 2s\n  stop_timeout: 5s\n",
            archive = archive.display(),
            dest = dest.display(),
            name = self.name,
            version = self.version,
            listen = self.listen,
            instances = self.instances,
        );
        for line in &self.app_lines {
            manifest.push_str(&format!("  {line}\n"));
        }
        let path = dir.join(format!("{stem}.yml"));
        std::fs::write(&path, manifest).expect("write the manifest");
        path
    }
}

/// A small tar.gz standing in for a release: the app itself is the cutover binary.
fn demo_archive(version: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    tar.append_data(&mut header, "log/", std::io::empty())
        .expect("tar a dir");
    let body = format!("{version}\n");
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(body.len() as u64);
    tar.append_data(&mut header, "VERSION", body.as_bytes())
        .expect("tar a file");
    let gz = tar.into_inner().expect("finish the tar");
    gz.finish().expect("finish the gzip")
}

/// `GET path` on 127.0.0.1:`port` with a fresh connection; the body of a 200 answer, else `None`.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    use std::net::TcpStream;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}
