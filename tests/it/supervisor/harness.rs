//! A real `cutover supervise` in a temp dir, killed on drop, and the apps it is asked to run:
//! release dirs made by hand and specs whose `run` is the real demo app.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cutover::protocol::client::Client;
use cutover::protocol::{
    AppSpec, AppStatus, DeployRequest, ErrorKind, Progress, ReleaseInfo, ReleaseState,
    ReleasesRequest, Request, Response, RollbackRequest, StatusRequest,
};

pub use crate::support::Reaper;
use crate::support::{cutover, cutover_bin, free_port, wait_until};

/// How long a rollout may take in these tests (a loaded 2-core CI box is slow).
pub const ROLLOUT: Duration = Duration::from_secs(60);

/// One supervisor process over a state dir that outlives it (for restart tests).
pub struct Supervisor {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub stderr: PathBuf,
    child: Child,
    /// Started by [`Supervisor::start_activated`]: `child` is the stand-in service manager.
    activated: bool,
}

impl Supervisor {
    /// Starts `cutover supervise` and waits until its control socket answers.
    pub fn start(home: &Path) -> Supervisor {
        Supervisor::start_with(home, |_| {})
    }

    /// [`Supervisor::start`], with the command set up by `setup` first (limits, environment).
    pub fn start_with(home: &Path, setup: impl FnOnce(&mut Command)) -> Supervisor {
        let state_dir = home.join("state");
        let socket = home.join("cutover.sock");
        let stderr = home.join("supervisor.log");
        let mut command = command(&state_dir, &socket, &stderr, &[]);
        setup(&mut command);
        let child = command.spawn().expect("start cutover supervise");
        let supervisor = Supervisor {
            state_dir,
            socket,
            stderr,
            child,
            activated: false,
        };
        wait_until("the control socket to answer", ROLLOUT, || {
            block_on(Client::connect(&supervisor.socket)).is_ok()
        });
        supervisor
    }

    /// Starts `cutover supervise --take-over` on the same state dir and socket, and waits until
    /// the running supervisor has handed over and exited; this one is the supervisor from then on.
    pub fn take_over(&mut self) {
        let old_pid = self.pid();
        let child = spawn(
            &self.state_dir,
            &self.socket,
            &self.stderr,
            &["--take-over"],
        );
        let mut old = std::mem::replace(&mut self.child, child);
        wait_until("the old supervisor to hand over and exit", ROLLOUT, || {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                panic!("the new supervisor exited with {status}:\n{}", self.log());
            }
            old.try_wait().ok().flatten().is_some()
        });
        let status = old.wait().expect("reap the old supervisor");
        assert!(
            status.success(),
            "the old supervisor ({old_pid}) exited with {status}:\n{}",
            self.log()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs the supervisor the way systemd does with `cutover.socket`: `systemd-socket-activate`
    /// binds the control socket and `listen` and keeps them, and a shell stands in for the
    /// service manager, starting `cutover supervise` again each time it exits (`Restart=always`)
    /// with the same sockets in `LISTEN_FDS`.
    pub fn start_activated(home: &Path, listen: SocketAddr) -> Supervisor {
        let state_dir = home.join("state");
        let socket = home.join("cutover.sock");
        let stderr = home.join("supervisor.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr)
            .expect("open the supervisor's log");
        // LISTEN_PID must name the process that reads it: the inner shell's pid, kept by exec.
        let manager = r#"while :; do sh -c 'export LISTEN_PID=$$; exec "$0" supervise --state-dir "$1" --socket "$2"' "$0" "$1" "$2" || sleep 1; done"#;
        let child = std::process::Command::new("systemd-socket-activate")
            .arg("-l")
            .arg(listen.to_string())
            .arg("-l")
            .arg(&socket)
            .args(["--", "sh", "-c", manager])
            .arg(cutover_bin())
            .arg(&state_dir)
            .arg(&socket)
            .env("RUST_LOG", "cutover=debug")
            .env_remove("CUTOVER_SOCKET")
            .env_remove("CUTOVER_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start systemd-socket-activate (Debian package `systemd`; tests/run.sh installs it)");
        let supervisor = Supervisor {
            state_dir,
            socket,
            stderr,
            child,
            activated: true,
        };
        // The first connection makes systemd-socket-activate start the manager shell.
        wait_until("the activated control socket to answer", ROLLOUT, || {
            block_on(Client::connect(&supervisor.socket)).is_ok()
        });
        supervisor
    }

    /// Pid of the `cutover supervise` the stand-in service manager runs now.
    pub fn activated_pid(&self) -> Option<u32> {
        children(self.child.id())
            .into_iter()
            .find(|(_, comm)| comm == "cutover")
            .map(|(pid, _)| pid)
    }

    /// The harshest crash: SIGKILL, no chance to persist or to let go of anything.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends one request and returns the final response (progress lines are dropped).
    pub fn request(&self, request: Request) -> Response {
        self.request_watched(request, |_| {})
    }

    /// Sends one request, hands each progress line to `on_progress` as it arrives and returns
    /// the final response.
    pub fn request_watched(
        &self,
        request: Request,
        on_progress: impl FnMut(&Progress),
    ) -> Response {
        block_on(async {
            let client = Client::connect(&self.socket).await.expect("connect");
            client
                .request(&request, on_progress)
                .await
                .expect("request")
        })
    }

    pub fn deploy(&self, app: &App, version: &str) -> Response {
        self.deploy_watched(app, version, |_| {})
    }

    /// Deploys, handing each progress line to `on_progress` as it arrives.
    pub fn deploy_watched(
        &self,
        app: &App,
        version: &str,
        on_progress: impl FnMut(&Progress),
    ) -> Response {
        let request = Request::Deploy(DeployRequest {
            app: app.spec(version),
            version: version.to_owned(),
            dest: app.dest.clone(),
        });
        self.request_watched(request, on_progress)
    }

    /// Deploys and insists it worked.
    pub fn deploy_ok(&self, app: &App, version: &str) {
        match self.deploy(app, version) {
            Response::Deployed(outcome) => assert_eq!(outcome.version, version),
            other => panic!(
                "deploy of {version} should succeed, got {other:?}\n{}",
                self.log()
            ),
        }
    }

    pub fn rollback(&self, app: &App, version: Option<&str>) -> Response {
        self.request(Request::Rollback(RollbackRequest {
            app: app.name.clone(),
            version: version.map(str::to_owned),
        }))
    }

    pub fn status(&self, app: &App) -> AppStatus {
        match self.request(Request::Status(StatusRequest {
            app: Some(app.name.clone()),
        })) {
            Response::Status(mut report) if report.apps.len() == 1 => report.apps.remove(0),
            other => panic!("status of {}: {other:?}", app.name),
        }
    }

    pub fn releases(&self, app: &App) -> Vec<ReleaseInfo> {
        match self.request(Request::Releases(ReleasesRequest {
            app: app.name.clone(),
        })) {
            Response::Releases(list) => list.releases,
            other => panic!("releases of {}: {other:?}", app.name),
        }
    }

    /// Pids of the instances that serve the live release.
    pub fn live_pids(&self, app: &App) -> Vec<u32> {
        let status = self.status(app);
        let live = status.live_version.clone();
        let mut pids: Vec<u32> = status
            .instances
            .iter()
            .filter(|i| Some(&i.version) == live.as_ref())
            .filter_map(|i| i.pid)
            .collect();
        pids.sort();
        pids
    }
}

/// `cutover supervise ARGS` on `state_dir` and `socket`, logging (appending) to `stderr`.
pub fn spawn(state_dir: &Path, socket: &Path, stderr: &Path, args: &[&str]) -> Child {
    command(state_dir, socket, stderr, args)
        .spawn()
        .expect("start cutover supervise")
}

/// The command [`spawn`] runs.
fn command(state_dir: &Path, socket: &Path, stderr: &Path, args: &[&str]) -> Command {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr)
        .expect("open the supervisor's log");
    let mut command = cutover();
    command
        .arg("supervise")
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("RUST_LOG", "cutover=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    command
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let supervisor = self.activated.then(|| self.activated_pid()).flatten();
        self.kill_9();
        if let Some(pid) = supervisor {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The children of `parent`: pid and command name, from /proc.
pub fn children(parent: u32) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_string_lossy().parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some((pid, comm))
        })
        .collect()
}

/// One app under test: its home (`dest`) and its public port. Its instances are killed on drop,
/// whichever supervisor started them (they outlive a killed supervisor by design).
pub struct App {
    pub name: String,
    pub dest: PathBuf,
    pub listen: SocketAddr,
    /// Demo-app flags per version (`--fail-boot`, …); versions not listed run plainly.
    pub faults: Vec<(String, String)>,
    pub tweak: fn(&mut AppSpec),
}

impl App {
    pub fn new(home: &Path, name: &str) -> App {
        App {
            name: name.to_owned(),
            dest: home.join(name),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            faults: Vec::new(),
            tweak: |_| {},
        }
    }

    /// Places an (empty) release dir, as the agent would.
    pub fn place(&self, version: &str) {
        fs::create_dir_all(self.dest.join("releases").join(version)).expect("make release dir");
    }

    /// The spec a manifest would carry: fast health checks, short drains and stops.
    pub fn spec(&self, version: &str) -> AppSpec {
        let faults = self
            .faults
            .iter()
            .filter(|(v, _)| v == version)
            .map(|(_, f)| f.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let mut spec: AppSpec = serde_json::from_value(serde_json::json!({
            "name": self.name,
            "version": version,
            "run": format!(
                "{} demo-app --port {{port}} --version-label {version} {faults}",
                cutover_bin().display()
            ),
            "listen": self.listen.to_string(),
            "instances": 1,
            "health": {
                "path": "/healthz", "interval": "100ms", "timeout": "2s",
                "healthy": 2, "unhealthy": 2, "deadline": "60s"
            },
            "drain_timeout": "5s",
            "stop_timeout": "5s",
            "keep_releases": 5,
        }))
        .expect("a valid app spec");
        (self.tweak)(&mut spec);
        spec
    }

    /// One GET through the app's public address; the body (`hello from VERSION …`).
    pub fn get(&self) -> Result<String, String> {
        let mut stream = std::net::TcpStream::connect(self.listen).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        use std::io::{Read, Write};
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.listen
        )
        .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| e.to_string())?;
        if !answer.starts_with("HTTP/1.1 200") {
            return Err(answer);
        }
        Ok(answer)
    }

    /// The usual start of a test: a supervisor in `home` (with a reaper for this app's
    /// processes), every one of `versions` placed, and the first deployed and serving.
    pub fn serving(&self, home: &Path, versions: &[&str]) -> (Reaper, Supervisor) {
        let reaper = Reaper(vec![self.dest.clone()]);
        let supervisor = Supervisor::start(home);
        for version in versions {
            self.place(version);
        }
        supervisor.deploy_ok(self, versions[0]);
        self.wait_serving(versions[0]);
        (reaper, supervisor)
    }

    /// Waits until a GET through the proxy is answered by `version`.
    pub fn wait_serving(&self, version: &str) {
        let needle = format!("hello from {version} ");
        wait_until(
            &format!("{} to serve {version}", self.name),
            ROLLOUT,
            || self.get().is_ok_and(|body| body.contains(&needle)),
        );
    }
}

/// Whether `pid` is a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| !s.trim_start().starts_with('Z'))
    })
}

/// The state of `version` in a release list.
pub fn state_of(releases: &[ReleaseInfo], version: &str) -> Option<ReleaseState> {
    releases
        .iter()
        .find(|r| r.version == version)
        .map(|r| r.state)
}

/// The error kind and message of a response that must be an error.
pub fn error_of(response: Response) -> (ErrorKind, String) {
    match response {
        Response::Error(e) => (e.kind, e.message),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for one request")
        .block_on(future)
}
