//! Benchmark: 50 consecutive blue-green deploys under load, 50 canary promotions and 50 canary
//! aborts under load, and the idle supervisor's footprint.
//!
//! `cargo bench --bench deploys` runs the real `cutover supervise` and real `cutover demo-app`
//! instances in a temp dir and prints:
//! - deploys: how many requests the load saw fail (HTTP errors and socket errors; target 0/0)
//!   and the deploy rate;
//! - canaries: the same for canaries of good releases (promoted; target 0/0), and for canaries
//!   of releases answering 5 % of requests with 500 (backed out at their first step, 10 %): the
//!   500s clients saw, which can only come from the bad canary's own share, and socket errors
//!   (target 0);
//! - idle: the supervisor's RSS with 3 idle apps, with the admin address off and then on and scraped
//!   once (VmRSS; target ≤ 20 MB) and the CPU ticks it
//!   used over 10 s of idleness (utime+stime from /proc/PID/stat; target ~0: no polling loops);
//! - bursts: the supervisor's RSS before, after each of `BURSTS` bursts of `BURST` connections
//!   that each ask one request at once, and once the burst's idle connections have expired
//!   (target ≤ 40 MB after 8 bursts of 5,000).
//!
//! Environment: `DEPLOYS` (default 50), `CANARIES` (default 50 of each), `CLIENTS` (default 4),
//! `BURSTS` (default 8), `BURST` (default 5000); a count of 0 skips its part.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{env_number, free_port};
use cutover::protocol::client::Client;
use cutover::protocol::{AppSpec, DeployRequest, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

fn main() {
    let deploys: u32 = env_number("DEPLOYS", 50);
    let canaries: u32 = env_number("CANARIES", 50);
    let clients: usize = env_number("CLIENTS", 4);
    let bursts: u32 = env_number("BURSTS", 8);
    let burst: usize = env_number("BURST", 5000);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        if deploys > 0 {
            deploys_under_load(deploys, clients).await;
        }
        if canaries > 0 {
            canaries_under_load(canaries, clients).await;
        }
        // Side by side: the admin address off (the default), then on and scraped once.
        idle_footprint(false).await;
        idle_footprint(true).await;
        if bursts > 0 && burst > 0 {
            memory_after_bursts(bursts, burst).await;
        }
    });
}

async fn deploys_under_load(deploys: u32, clients: usize) {
    let home = tempfile::tempdir().expect("temp dir");
    let supervisor = Supervisor::start(home.path()).await;
    let app = BenchApp::new(home.path(), "bench", 2, "100ms");
    supervisor.deploy(&app, "v0").await;

    let load = Load::start(app.listen, clients);
    let started = Instant::now();
    for n in 1..=deploys {
        supervisor.deploy(&app, &format!("v{n}")).await;
    }
    let elapsed = started.elapsed();
    let (ok, failed, socket_errors) = load.stop().await;
    let per_minute = f64::from(deploys) / elapsed.as_secs_f64() * 60.0;
    println!(
        "deploys: {deploys} blue-green deploys of 2 instances in {:.1}s ({per_minute:.1} deploys/min) \
         under {clients} keep-alive clients: {ok} requests ok, {failed} failed, {socket_errors} socket errors \
         (target 0/0)",
        elapsed.as_secs_f64()
    );
    supervisor.stop_app(&app).await;
}

async fn canaries_under_load(canaries: u32, clients: usize) {
    let home = tempfile::tempdir().expect("temp dir");
    let supervisor = Supervisor::start(home.path()).await;
    let mut app = BenchApp::new(home.path(), "canary", 2, "100ms");
    app.canary = true;
    supervisor.deploy(&app, "v0").await;

    let load = Load::start(app.listen, clients);
    let started = Instant::now();
    for n in 1..=canaries {
        supervisor.deploy(&app, &format!("v{n}")).await;
    }
    let promoted = started.elapsed();
    let (ok, failed, socket_errors) = load.read();
    println!(
        "canaries: {canaries} promotions (steps 10%, 50%, 200ms each and until each side has \
         answered 1,000 requests) in {:.1}s under {clients} \
         keep-alive clients: {ok} requests ok, {failed} failed, {socket_errors} socket errors \
         (target 0/0)",
        promoted.as_secs_f64()
    );
    let started = Instant::now();
    for n in 1..=canaries {
        supervisor.deploy_failing(&app, &format!("bad{n}")).await;
    }
    let aborted = started.elapsed();
    let (ok2, failed2, socket_errors2) = load.stop().await;
    let (ok2, failed2, socket_errors2) =
        (ok2 - ok, failed2 - failed, socket_errors2 - socket_errors);
    let total = ok2 + failed2 + socket_errors2;
    println!(
        "canaries: {canaries} aborts of releases with 5% errors in {:.1}s: {total} requests, \
         {failed2} answered 500 by the bad canaries ({:.3}% of all; their share was at most \
         10% x 5% = 0.5%), {socket_errors2} socket errors (target 0)",
        aborted.as_secs_f64(),
        failed2 as f64 * 100.0 / total.max(1) as f64
    );
    supervisor.stop_app(&app).await;
}

async fn idle_footprint(metrics: bool) {
    let home = tempfile::tempdir().expect("temp dir");
    let admin = metrics.then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
    let supervisor = Supervisor::start_with(home.path(), admin).await;
    let apps: Vec<BenchApp> = (0..3)
        .map(|i| BenchApp::new(home.path(), &format!("idle{i}"), 1, "1s"))
        .collect();
    for app in &apps {
        supervisor.deploy(app, "v1").await;
    }
    // Let the first health checks and the deploys' tails settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(admin) = admin {
        // What a Prometheus server does every 15 s or so: the page is built, sent and dropped.
        let bytes = scrape(admin).await;
        println!("idle: /metrics is {bytes} bytes with 3 apps");
    }
    let pid = supervisor.child.id();
    let before = cpu_ticks(pid);
    // The measurement itself is an idle period: nothing may be polled to end it early.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let ticks = cpu_ticks(pid) - before;
    let rss_kb = rss_kb(pid);
    println!(
        "idle: supervisor with 3 apps (1 instance each, health checks every 1s), metrics {}: \
         RSS {:.1} MB (target <= 20 MB), {ticks} CPU ticks in 10s (target ~0; {} ticks/s)",
        if metrics { "on and scraped" } else { "off" },
        rss_kb as f64 / 1024.0,
        ticks_per_second()
    );
    for app in &apps {
        supervisor.stop_app(app).await;
    }
}

async fn memory_after_bursts(bursts: u32, burst: usize) {
    let home = tempfile::tempdir().expect("temp dir");
    let supervisor = Supervisor::start(home.path()).await;
    let app = BenchApp::new(home.path(), "bursts", 2, "1s");
    supervisor.deploy(&app, "v1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = supervisor.child.id();
    let mb = |pid| rss_kb(pid) as f64 / 1024.0;
    let mut line = format!("bursts: RSS {:.1} MB before", mb(pid));
    for _ in 0..bursts {
        let failed = one_burst(app.listen, burst).await;
        line += &format!(", {:.1}", mb(pid));
        if failed > 0 {
            line += &format!(" ({failed} failed)");
        }
    }
    // The burst's connections to the instances are closed once idle for the pool's 15 s.
    tokio::time::sleep(Duration::from_secs(17)).await;
    println!(
        "{line} MB after each of {bursts} bursts of {burst} connections; {:.1} MB once their \
         idle instance connections expired (target <= 40 MB)",
        mb(pid)
    );
    supervisor.stop_app(&app).await;
}

/// Opens `n` connections at once, each asking `GET /` and waiting for every other to be
/// answered before closing; returns how many failed.
async fn one_burst(addr: SocketAddr, n: usize) -> usize {
    let answered = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let answered = answered.clone();
            tokio::spawn(async move {
                let answer = match connect(addr).await {
                    Ok(mut sender) => get(&mut sender, addr).await,
                    Err(err) => Err(format!("connect: {err}")),
                };
                let ok = match answer {
                    Ok(status) if status < 400 => true,
                    Ok(status) => {
                        eprintln!("burst: GET / answered {status}");
                        false
                    }
                    Err(err) => {
                        eprintln!("burst: {err}");
                        false
                    }
                };
                // Everyone holds their connection until all are answered: a real burst.
                answered.wait().await;
                ok
            })
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        failed += usize::from(!task.await.unwrap_or(false));
    }
    failed
}

/// `GET /metrics` on the admin address; the length of the answer.
async fn scrape(admin: SocketAddr) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect to the admin address");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the scrape");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .expect("read the scrape");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "the scrape failed");
    answer.len()
}

/// `cutover supervise` in a temp dir, killed on drop.
struct Supervisor {
    socket: PathBuf,
    child: Child,
}

impl Supervisor {
    async fn start(home: &Path) -> Supervisor {
        Supervisor::start_with(home, None).await
    }

    /// With `--metrics-listen ADDR` when `metrics` is given.
    async fn start_with(home: &Path, metrics: Option<SocketAddr>) -> Supervisor {
        let socket = home.join("cutover.sock");
        let mut command = Command::new(env!("CARGO_BIN_EXE_cutover"));
        if let Some(addr) = metrics {
            command.env("CUTOVER_METRICS_LISTEN", addr.to_string());
        }
        let child = command
            .arg("supervise")
            .arg("--state-dir")
            .arg(home.join("state"))
            .arg("--socket")
            .arg(&socket)
            .env("RUST_LOG", "cutover=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cutover supervise");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Client::connect(&socket).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the supervisor did not come up in 30s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Supervisor { socket, child }
    }

    async fn request(&self, request: Request) -> Response {
        common::request(&self.socket, request).await
    }

    /// Places and deploys `version`; the supervisor's answer.
    async fn try_deploy(&self, app: &BenchApp, version: &str) -> Response {
        app.place(version);
        self.request(Request::Deploy(DeployRequest {
            app: app.spec(version),
            version: version.to_owned(),
            dest: app.dest.clone(),
        }))
        .await
    }

    async fn deploy(&self, app: &BenchApp, version: &str) {
        match self.try_deploy(app, version).await {
            Response::Deployed(_) => {}
            other => panic!("deploy {version} of {}: {other:?}", app.name),
        }
    }

    /// Deploys a release that must fail (a canary backed out); panics if it goes live.
    async fn deploy_failing(&self, app: &BenchApp, version: &str) {
        match self.try_deploy(app, version).await {
            Response::Error(_) => {}
            other => panic!("deploy {version} of {} should fail: {other:?}", app.name),
        }
    }

    async fn stop_app(&self, app: &BenchApp) {
        common::stop_app(&self.socket, &app.name).await;
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct BenchApp {
    name: String,
    dest: PathBuf,
    listen: SocketAddr,
    instances: u32,
    /// Health-check interval: fast for the deploy run, the 1s default for the idle run.
    interval: &'static str,
    /// `strategy: canary` with short steps; versions named `bad…` answer 5 % of requests with 500.
    canary: bool,
}

impl BenchApp {
    fn new(home: &Path, name: &str, instances: u32, interval: &'static str) -> BenchApp {
        let port = free_port();
        BenchApp {
            name: name.to_owned(),
            dest: home.join(name),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            instances,
            interval,
            canary: false,
        }
    }

    fn place(&self, version: &str) {
        std::fs::create_dir_all(self.dest.join("releases").join(version)).expect("release dir");
    }

    fn spec(&self, version: &str) -> AppSpec {
        let faults = if version.starts_with("bad") {
            "--error-rate 0.05"
        } else {
            ""
        };
        let mut spec = serde_json::json!({
            "name": self.name,
            "run": format!(
                "{} demo-app --port {{port}} --version-label {version} {faults}",
                env!("CARGO_BIN_EXE_cutover")
            ),
            "listen": self.listen.to_string(),
            "instances": self.instances,
            "health": { "path": "/healthz", "interval": self.interval, "healthy": 2, "deadline": "60s" },
            "drain_timeout": "10s",
            "stop_timeout": "10s",
            "keep_releases": 3,
        });
        if self.canary {
            spec["strategy"] = "canary".into();
            spec["canary"] = serde_json::json!({
                "steps": ["10%", "50%"], "pause": "200ms", "min_requests": 20,
                // One-second p99s on a shared 2-core box swing 2x: errors are what is measured.
                "max_p99_ratio": 10.0,
            });
        }
        serde_json::from_value(spec).expect("a valid spec")
    }
}

/// Keep-alive clients sending `GET /` back to back; a broken connection is counted and re-made.
struct Load {
    stop: Arc<AtomicBool>,
    counters: Arc<[AtomicU64; 3]>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
        let tasks = (0..clients)
            .map(|_| tokio::spawn(client(addr, stop.clone(), counters.clone())))
            .collect();
        Load {
            stop,
            counters,
            tasks,
        }
    }

    /// (ok, failed responses, socket errors) so far.
    fn read(&self) -> (u64, u64, u64) {
        let [ok, failed, errors] = &*self.counters;
        (
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
        )
    }

    /// Stops the clients and returns (ok, failed responses, socket errors).
    async fn stop(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let [ok, failed, errors] = &*self.counters;
        (
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
        )
    }
}

async fn client(addr: SocketAddr, stop: Arc<AtomicBool>, counters: Arc<[AtomicU64; 3]>) {
    let [ok, failed, errors] = &*counters;
    let mut sender = None;
    while !stop.load(Ordering::Relaxed) {
        if sender.is_none() {
            match connect(addr).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("connect to {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        match get(s, addr).await {
            Ok(status) if status < 400 => {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(status) => {
                failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("GET / answered {status}");
            }
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("GET /: {e}");
                sender = None;
            }
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn get(sender: &mut Sender, addr: SocketAddr) -> Result<u16, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let request = http::Request::get("/")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .map_err(|_| "no answer within 30s".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

/// utime + stime of `pid`, in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // `rest` starts at field 3, so field N is at index N - 3.
    let field = |n: usize| fields[n - 3].parse::<u64>().expect("a number");
    field(14) + field(15)
}

fn rss_kb(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn ticks_per_second() -> i64 {
    // SAFETY: sysconf only reads a system constant.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }
}
