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

mod common;
#[path = "restart/load.rs"]
mod load;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{children, env_number, free_port, has, terminate, wait_for, Nginx};
use cutover::protocol::{AppSpec, DeployRequest, Request, Response, StatusRequest};
use load::{Figures, Load};

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
                    let mut nginx = Nginx::start(dir.path(), &backends, false);
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
        common::request(&self.socket, request).await
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
        common::stop_app(&self.socket, &app.name).await;
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

/// The `cutover` child of `parent` (the supervisor under the stand-in service manager).
fn cutover_child(parent: u32) -> Option<u32> {
    children(parent)
        .into_iter()
        .find(|(_, comm)| comm == "cutover")
        .map(|(pid, _)| pid)
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
