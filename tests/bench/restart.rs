//! Benchmark: restarting the supervisor under constant load, beside nginx's reload.
//!
//! `cargo bench --bench restart` runs the real `cutover supervise` with one app of 2 `cutover
//! demo-app` instances, puts constant HTTP load on the app's port (keep-alive clients, and
//! clients opening a fresh connection per request so that connects are tried all along), and
//! restarts the supervisor `RESTARTS` times (default 20) each way:
//! - hand-over: `cutover supervise --take-over` replaces the running one (SCM_RIGHTS);
//! - socket activation: systemd-socket-activate holds the sockets, a shell restarts cutover after
//!   each SIGTERM (what `systemctl restart cutover` does with manifests/cutover.socket);
//! - plain restart, the baseline without either: SIGTERM, then start again (the port is closed
//!   in between, as with kamal-proxy's reboot);
//! - nginx (Debian's): `nginx -s reload` under the same load, proxying to the same instances.
//!
//! It prints, per way, refused connections, other socket errors and failed (non-2xx) requests.
//! `CLIENTS` (default 8, half of them keep-alive) sets the load.

#[path = "restart/load.rs"]
mod load;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cutover::protocol::client::Client;
use cutover::protocol::{AppSpec, DeployRequest, Request, Response, StatusRequest};
use load::{Figures, Load};

const DEADLINE: Duration = Duration::from_secs(60);

fn main() {
    let restarts: u32 = env_number("RESTARTS", 20);
    let clients: usize = env_number("CLIENTS", 8);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        println!(
            "restart bench: {restarts} restarts each under {clients} clients ({} keep-alive), \
             app of 2 `cutover demo-app` instances",
            clients / 2
        );
        println!(
            "{:<34} {:>9} {:>8} {:>8} {:>8} {:>10}",
            "way", "requests", "refused", "socket", "non-2xx", "restart ms"
        );
        for way in [Way::HandOver, Way::Activated, Way::Plain] {
            if way == Way::Activated && !has("systemd-socket-activate", "--version") {
                println!(
                    "{:<34} not installed (apt-get install systemd)",
                    way.label()
                );
                continue;
            }
            let home = tempfile::tempdir().expect("temp dir");
            let mut supervisor = Supervisor::start(home.path(), way).await;
            let app = BenchApp::new(home.path());
            supervisor.deploy(&app).await;
            let (figures, per_restart) =
                measure(app.listen, clients, restarts, || supervisor.restart()).await;
            print_row(way.label(), &figures, per_restart);
            if way == Way::HandOver {
                // nginx runs against the same instances, while this supervisor still runs them.
                let backends = supervisor.instance_addrs(&app).await;
                if has("nginx", "-v") {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let mut nginx = Nginx::start(dir.path(), &backends);
                    let (figures, per_restart) =
                        measure(nginx.listen, clients, restarts, || nginx.reload()).await;
                    print_row("nginx -s reload", &figures, per_restart);
                } else {
                    println!("nginx: not installed (apt-get install nginx-light), no comparison");
                }
            }
            supervisor.stop_app(&app).await;
        }
    });
}

fn print_row(label: &str, f: &Figures, per_restart: Duration) {
    println!(
        "{label:<34} {:>9} {:>8} {:>8} {:>8} {:>10.0}",
        f.ok + f.failed + f.refused + f.socket,
        f.refused,
        f.socket,
        f.failed,
        per_restart.as_secs_f64() * 1000.0
    );
}

/// Puts load on `addr`, restarts `restarts` times (each restart waits until it is complete and
/// requests flow again), and returns the load's figures and the mean time of one restart.
async fn measure(
    addr: SocketAddr,
    clients: usize,
    restarts: u32,
    mut restart: impl FnMut(),
) -> (Figures, Duration) {
    let load = Load::start(addr, clients);
    load.wait_for_more_ok(200).await;
    let mut spent = Duration::ZERO;
    for _ in 0..restarts {
        let started = Instant::now();
        // The restart's own waits block: run it off the runtime that drives the load.
        tokio::task::block_in_place(&mut restart);
        spent += started.elapsed();
        load.wait_for_more_ok(200).await;
    }
    (load.stop().await, spent / restarts.max(1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    HandOver,
    Activated,
    Plain,
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::HandOver => "cutover supervise --take-over",
            Way::Activated => "cutover, systemd socket activation",
            Way::Plain => "cutover, plain restart (baseline)",
        }
    }
}

/// `cutover supervise` in a temp dir, restarted the way `Way` says; killed on drop.
struct Supervisor {
    way: Way,
    home: PathBuf,
    socket: PathBuf,
    /// The supervisor, or for `Activated` the shell standing in for systemd.
    child: Child,
}

impl Supervisor {
    async fn start(home: &Path, way: Way) -> Supervisor {
        let socket = home.join("cutover.sock");
        let child = match way {
            Way::Activated => {
                let listen = BenchApp::new(home).listen;
                let manager = r#"while :; do sh -c 'export LISTEN_PID=$$; exec "$0" supervise --state-dir "$1" --socket "$2"' "$0" "$1" "$2" || sleep 1; done"#;
                Command::new("systemd-socket-activate")
                    .args(["-l", &listen.to_string(), "-l"])
                    .arg(&socket)
                    .args(["--", "sh", "-c", manager, env!("CARGO_BIN_EXE_cutover")])
                    .arg(home.join("state"))
                    .arg(&socket)
                    .env("RUST_LOG", "cutover=error")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start systemd-socket-activate")
            }
            _ => spawn(home, &[]),
        };
        let supervisor = Supervisor {
            way,
            home: home.to_owned(),
            socket,
            child,
        };
        wait_for("the supervisor to answer", || {
            std::os::unix::net::UnixStream::connect(&supervisor.socket).is_ok()
        });
        supervisor
    }

    /// One restart, complete when the new supervisor serves (and the old one is gone).
    fn restart(&mut self) {
        match self.way {
            Way::HandOver => {
                let mut old =
                    std::mem::replace(&mut self.child, spawn(&self.home, &["--take-over"]));
                wait_for("the old supervisor to hand over", || {
                    old.try_wait().ok().flatten().is_some()
                });
            }
            Way::Activated => {
                let old = cutover_child(self.child.id()).expect("cutover supervise runs");
                terminate(old);
                wait_for("systemd-socket-activate's cutover to start again", || {
                    cutover_child(self.child.id()).is_some_and(|pid| pid != old)
                        && std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
                });
            }
            Way::Plain => {
                terminate(self.child.id());
                let _ = self.child.wait();
                self.child = spawn(&self.home, &[]);
                wait_for("the restarted supervisor to answer", || {
                    std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
                });
            }
        }
    }

    async fn request(&self, request: Request) -> Response {
        let client = Client::connect(&self.socket).await.expect("connect");
        client.request(&request, |_| {}).await.expect("request")
    }

    async fn deploy(&self, app: &BenchApp) {
        std::fs::create_dir_all(app.dest.join("releases/v1")).expect("release dir");
        let request = Request::Deploy(DeployRequest {
            app: app.spec(),
            version: "v1".to_owned(),
            dest: app.dest.clone(),
        });
        match self.request(request).await {
            Response::Deployed(_) => {}
            other => panic!("deploy of the bench app: {other:?}"),
        }
    }

    async fn instance_addrs(&self, app: &BenchApp) -> Vec<String> {
        let request = Request::Status(StatusRequest {
            app: Some(app.name.clone()),
        });
        match self.request(request).await {
            Response::Status(report) => report.apps[0]
                .instances
                .iter()
                .map(|i| i.addr.clone())
                .collect(),
            other => panic!("status: {other:?}"),
        }
    }

    async fn stop_app(&self, app: &BenchApp) {
        let request = Request::Stop(cutover::protocol::StopRequest {
            app: app.name.clone(),
        });
        let _ = self.request(request).await;
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let activated = (self.way == Way::Activated)
            .then(|| cutover_child(self.child.id()))
            .flatten();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = activated {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn spawn(home: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .arg("supervise")
        .arg("--state-dir")
        .arg(home.join("state"))
        .arg("--socket")
        .arg(home.join("cutover.sock"))
        .args(args)
        .env("RUST_LOG", "cutover=error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cutover supervise")
}

fn terminate(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// The `cutover` child of `parent` (the supervisor under the stand-in service manager).
fn cutover_child(parent: u32) -> Option<u32> {
    children(parent)
        .into_iter()
        .find(|(_, comm)| comm == "cutover")
        .map(|(pid, _)| pid)
}

/// Pid and command name of each child of `parent`, from /proc.
fn children(parent: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some((pid, comm))
        })
        .collect()
}

struct BenchApp {
    name: String,
    dest: PathBuf,
    listen: SocketAddr,
}

impl BenchApp {
    /// The app's port is fixed per home, so the socket-activated supervisor can be given it
    /// before the app is deployed.
    fn new(home: &Path) -> BenchApp {
        let port_file = home.join("port");
        let port = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let port = free_port();
                std::fs::write(&port_file, port.to_string()).expect("write the port");
                port
            });
        BenchApp {
            name: "bench".to_owned(),
            dest: home.join("bench"),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn spec(&self) -> AppSpec {
        serde_json::from_value(serde_json::json!({
            "name": self.name,
            "run": format!("{} demo-app --port {{port}} --version-label v1", env!("CARGO_BIN_EXE_cutover")),
            "listen": self.listen.to_string(),
            "instances": 2,
            "health": { "path": "/healthz", "interval": "100ms", "healthy": 2, "deadline": "60s" },
        }))
        .expect("a valid spec")
    }
}

/// nginx (2 workers, upstream keep-alive) in front of `backends`; stopped on drop.
struct Nginx {
    dir: PathBuf,
    conf: PathBuf,
    listen: SocketAddr,
    child: Child,
}

impl Nginx {
    fn start(dir: &Path, backends: &[String]) -> Nginx {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let prefix = dir.display();
        let servers: String = backends.iter().map(|b| format!("server {b}; ")).collect();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\npid {prefix}/nginx.pid;\n\
             error_log {prefix}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n  \
             proxy_temp_path {prefix}/proxy;\n  fastcgi_temp_path {prefix}/fastcgi;\n  \
             uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n  \
             upstream backend {{ {servers}keepalive 64; }}\n  \
             server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://backend;\n      \
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Nginx {
            dir: dir.to_owned(),
            conf: path,
            listen,
            child,
        };
        wait_for("nginx to listen", || {
            std::net::TcpStream::connect(listen).is_ok() && nginx.workers().len() == 2
        });
        nginx
    }

    fn workers(&self) -> Vec<u32> {
        children(self.child.id())
            .into_iter()
            .map(|(pid, _)| pid)
            .collect()
    }

    /// `nginx -s reload`, complete when the old workers are gone and two new ones run.
    fn reload(&mut self) {
        let old = self.workers();
        let status = Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(&self.conf)
            .args(["-s", "reload"])
            .status()
            .expect("run nginx -s reload");
        assert!(status.success(), "nginx -s reload failed");
        wait_for("nginx's old workers to exit", || {
            let now = self.workers();
            !now.iter().any(|pid| old.contains(pid)) && now.len() == 2
        });
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        terminate(self.child.id());
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn has(program: &str, version_flag: &str) -> bool {
    Command::new(program)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
