//! A real `cutover supervise` over a state dir, and everything a test does to it: start it (in a
//! temp dir of its own or in a home that outlives it, with limits, or under systemd socket
//! activation), stop it, `kill -9` it, restart it or have a successor take over; drive it through
//! the real CLI; read its log. `control_socket` asks it things over its control socket.
//!
//! Drop kills it and, as a last resort, the process groups its state file records, so no test
//! leaves an app process behind, even one that panicked after a `kill_9()`; the supervisor's log
//! is printed when the test failed.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use cutover::protocol::client::Client;

use super::control_socket::block_on;
use super::procs::{children, kill_9};
use super::{cutover, cutover_bin, wait_until};

/// How long a start or a rollout may take in these tests (a loaded 2-core CI box is slow).
pub const ROLLOUT: Duration = Duration::from_secs(60);

/// A `cutover supervise` with its state dir, control socket and log (`supervisor.log`, appended
/// to by every run) under one home.
pub struct Supervisor {
    pub home: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    /// Started by [`Supervisor::start_activated`]: `child` is the stand-in service manager.
    activated: bool,
    /// The home, when it is a temp dir of the supervisor's own; removed last.
    _temp: Option<tempfile::TempDir>,
}

impl Supervisor {
    /// Starts a supervisor in a temp dir of its own and waits until its control socket answers.
    pub fn start() -> Supervisor {
        Supervisor::start_at(|home| home.join("cutover.sock"))
    }

    /// [`Supervisor::start`] with the socket at `socket(temp dir)`, e.g. in a directory still to
    /// create.
    pub fn start_at(socket: impl FnOnce(&Path) -> PathBuf) -> Supervisor {
        let temp = tempfile::tempdir().expect("temp dir for the supervisor");
        let home = temp.path().to_owned();
        let mut supervisor = Supervisor::new(&home, socket(&home), Some(temp));
        supervisor.launch(&[], |_| {});
        supervisor
    }

    /// Starts a supervisor in `home`, whose state outlives it (for restart tests).
    pub fn start_in(home: &Path) -> Supervisor {
        Supervisor::start_with(home, |_| {})
    }

    /// [`Supervisor::start_in`], with the command set up by `setup` first (limits, environment).
    pub fn start_with(home: &Path, setup: impl FnOnce(&mut Command)) -> Supervisor {
        let mut supervisor = Supervisor::new(home, home.join("cutover.sock"), None);
        supervisor.launch(&[], setup);
        supervisor
    }

    fn new(home: &Path, socket: PathBuf, temp: Option<tempfile::TempDir>) -> Supervisor {
        Supervisor {
            home: home.to_owned(),
            state_dir: home.join("state"),
            socket,
            log_path: home.join("supervisor.log"),
            child: None,
            activated: false,
            _temp: temp,
        }
    }

    /// Runs the supervisor the way systemd does with `cutover.socket`: `systemd-socket-activate`
    /// binds the control socket and `listen` and keeps them, and a shell stands in for the
    /// service manager, starting `cutover supervise` again each time it exits (`Restart=always`)
    /// with the same sockets in `LISTEN_FDS`.
    pub fn start_activated(home: &Path, listen: SocketAddr) -> Supervisor {
        let mut supervisor = Supervisor::new(home, home.join("cutover.sock"), None);
        supervisor.activated = true;
        // LISTEN_PID must name the process that reads it: the inner shell's pid, kept by exec.
        let manager = r#"while :; do sh -c 'export LISTEN_PID=$$; exec "$0" supervise --state-dir "$1" --socket "$2"' "$0" "$1" "$2" || sleep 1; done"#;
        let child = Command::new("systemd-socket-activate")
            .arg("-l")
            .arg(listen.to_string())
            .arg("-l")
            .arg(&supervisor.socket)
            .args(["--", "sh", "-c", manager])
            .arg(cutover_bin())
            .arg(&supervisor.state_dir)
            .arg(&supervisor.socket)
            .env("RUST_LOG", "cutover=debug")
            .env_remove("CUTOVER_SOCKET")
            .env_remove("CUTOVER_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(supervisor.log_file())
            .spawn()
            .expect("start systemd-socket-activate (Debian package `systemd`; tests/run.sh installs it)");
        supervisor.child = Some(child);
        // The first connection makes systemd-socket-activate start the manager shell.
        supervisor.wait_answering();
        supervisor
    }

    /// `cutover supervise ARGS` on this state dir, logging to this log, with its socket at
    /// `socket`; not waited for.
    fn spawn(&self, socket: &Path, args: &[&str], setup: impl FnOnce(&mut Command)) -> Child {
        let mut log = self.log_file();
        let _ = writeln!(
            log,
            "---- test harness: starting cutover supervise {args:?}"
        );
        let mut command = supervise(&self.state_dir, socket);
        command
            .args(args)
            .env("RUST_LOG", "cutover=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        setup(&mut command);
        command.spawn().expect("start cutover supervise")
    }

    fn log_file(&self) -> std::fs::File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the supervisor's log")
    }

    /// Spawns the supervisor and waits until its control socket answers.
    fn launch(&mut self, args: &[&str], setup: impl FnOnce(&mut Command)) {
        self.child = Some(self.spawn(&self.socket, args, setup));
        self.wait_answering();
    }

    /// Waits until the control socket answers a handshake; panics if the supervisor exits.
    fn wait_answering(&mut self) {
        wait_until("the control socket to answer", ROLLOUT, || {
            self.assert_running();
            block_on(Client::connect(&self.socket)).is_ok()
        });
    }

    /// Panics, with the log, if the supervisor process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!("the supervisor exited with {status}:\n{}", self.log());
        }
    }

    /// Starts `cutover supervise` on this state dir with `setup`, expecting it to refuse to
    /// start: its exit status and everything it logged.
    pub fn start_refused(
        &self,
        setup: impl FnOnce(&mut Command),
    ) -> (std::process::ExitStatus, String) {
        let before = self.log().len();
        let mut child = self.spawn(&self.socket, &[], setup);
        let mut status = None;
        wait_until("the supervisor to refuse to start", ROLLOUT, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        let log = self.log();
        (status.expect("exited"), log[before..].to_owned())
    }

    /// Pid of the running supervisor process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the supervisor runs").id()
    }

    /// Pid of the supervisor process, unless it was stopped or killed.
    pub fn running_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Pid of the `cutover supervise` the stand-in service manager runs now.
    pub fn activated_pid(&self) -> Option<u32> {
        children(self.pid())
            .into_iter()
            .find(|(_, comm)| comm == "cutover")
            .map(|(pid, _)| pid)
    }

    /// The harshest crash: SIGKILL, no chance to persist or to let go of anything (its apps keep
    /// running).
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A clean stop: SIGTERM, and waits for the supervisor to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    /// Stops the supervisor if it runs (a clean stop) and starts it again on the same state dir
    /// and socket.
    pub fn restart(&mut self) {
        self.restart_with(|_| {});
    }

    /// [`Supervisor::restart`], with the command set up by `setup` first.
    pub fn restart_with(&mut self, setup: impl FnOnce(&mut Command)) {
        self.stop();
        self.launch(&[], setup);
    }

    /// Starts `cutover supervise --take-over` on the same state dir and socket, and waits until
    /// the running supervisor has handed over and exited; this one is the supervisor from then on.
    pub fn take_over(&mut self) {
        self.take_over_with(|_| {});
    }

    /// [`Supervisor::take_over`], with the successor's command set up by `setup` first.
    pub fn take_over_with(&mut self, setup: impl FnOnce(&mut Command)) {
        let old_pid = self.pid();
        let successor = self.spawn(&self.socket, &["--take-over"], setup);
        let mut old = self.child.replace(successor).expect("the supervisor runs");
        wait_until("the old supervisor to hand over and exit", ROLLOUT, || {
            self.assert_running();
            old.try_wait().ok().flatten().is_some()
        });
        let status = old.wait().expect("reap the old supervisor");
        assert!(
            status.success(),
            "the old supervisor ({old_pid}) exited with {status}:\n{}",
            self.log()
        );
    }

    /// Starts a successor (`--take-over`) whose own control socket is `socket`, and leaves it
    /// to the test.
    pub fn spawn_successor(&self, socket: &Path) -> Child {
        self.spawn(socket, &["--take-over"], |_| {})
    }

    /// Everything the supervisor wrote so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The real binary, pointed at this supervisor's socket and state dir.
    pub fn cli(&self) -> Command {
        let mut command = cutover();
        command
            .env("CUTOVER_SOCKET", &self.socket)
            .env("CUTOVER_STATE_DIR", &self.state_dir);
        command
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

    /// Process groups of instances recorded in any JSON file of the state dir.
    fn recorded_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.state_dir) else {
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
                self.log_path.display(),
                self.log()
            );
        }
        let activated = self.child.is_some() && self.activated;
        let managed = activated.then(|| self.activated_pid()).flatten();
        self.kill_9();
        if let Some(pid) = managed {
            kill_9(pid);
        }
        for pid in self.recorded_pids() {
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

/// `cutover supervise` on `state_dir` and `socket`, not started.
pub fn supervise(state_dir: &Path, socket: &Path) -> Command {
    let mut command = cutover();
    command
        .arg("supervise")
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--socket")
        .arg(socket);
    command
}
