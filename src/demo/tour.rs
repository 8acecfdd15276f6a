//! `cutover demo`: the README's main job. A real supervisor in a temp directory, the bundled demo
//! app deployed as v1 by the real agent, then v2 blue-green while requests keep flowing, the status
//! table, and a clean stop. Every step runs the real `cutover` binary as a child process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// Knobs of the tour.
#[derive(Debug, Clone)]
pub struct TourOptions {
    /// Work here instead of a fresh temp directory (kept afterwards).
    pub dir: Option<PathBuf>,
    /// Keep the temp directory (state, logs, releases) for a look afterwards.
    pub keep: bool,
    /// Concurrent clients sending requests during the switch.
    pub clients: usize,
}

/// What the load saw while the tour switched versions.
#[derive(Debug, Default)]
pub struct LoadTally {
    ok: AtomicU64,
    failed: AtomicU64,
    v1: AtomicU64,
    v2: AtomicU64,
}

/// Runs the tour; `Ok(true)` when both deploys succeeded and no request failed.
pub fn run(opts: &TourOptions) -> anyhow::Result<bool> {
    let exe = std::env::current_exe().context("cannot find the cutover binary to run")?;
    let temp = match &opts.dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("cutover-demo-").tempdir()?),
    };
    let root = match (&opts.dir, &temp) {
        (Some(dir), _) => dir.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => unreachable!("a temp dir exists when no dir was given"),
    };
    std::fs::create_dir_all(&root)?;
    let socket = root.join("cutover.sock");
    let listen = format!("127.0.0.1:{}", free_port()?);
    step(&format!("working in {}", root.display()));

    let manifests = ["v1", "v2"]
        .map(|version| write_release(&root, &exe, version, &listen))
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;

    step("starting the supervisor: cutover supervise");
    let mut supervisor = Supervisor::start(&exe, &root, &socket)?;
    supervisor.wait_ready(Duration::from_secs(20))?;

    step("deploying v1: echo file://…/v1.yml | cutover");
    ensure_ok(agent(&exe, &root, &socket, &manifests[0])?, "deploy of v1")?;

    let tally = Arc::new(LoadTally::default());
    let stop = Arc::new(AtomicBool::new(false));
    step(&format!(
        "sending requests to http://{listen}/ from {} clients",
        opts.clients
    ));
    let runtime = tokio::runtime::Runtime::new()?;
    let load = runtime.spawn(load(
        format!("http://{listen}/"),
        opts.clients,
        tally.clone(),
        stop.clone(),
    ));
    wait_for("the first answers from v1", Duration::from_secs(20), || {
        tally.v1.load(Ordering::Relaxed) >= 50
    })?;

    step("deploying v2 blue-green while the requests keep flowing");
    let v2_ok = agent(&exe, &root, &socket, &manifests[1])?.success();
    if v2_ok {
        wait_for("answers from v2", Duration::from_secs(20), || {
            tally.v2.load(Ordering::Relaxed) >= 50
        })?;
    }
    stop.store(true, Ordering::Relaxed);
    runtime
        .block_on(load)
        .context("the load generator failed")?;

    step("status after the switch: cutover status");
    let _ = Command::new(&exe)
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .status();

    let (ok, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    step(&format!(
        "load: {ok} requests answered ({} by v1, {} by v2), {failed} failed",
        tally.v1.load(Ordering::Relaxed),
        tally.v2.load(Ordering::Relaxed)
    ));

    step("stopping: cutover stop demo, then the supervisor");
    let _ = Command::new(&exe)
        .arg("--socket")
        .arg(&socket)
        .args(["stop", "demo"])
        .status();
    supervisor.stop();
    if opts.keep || opts.dir.is_some() {
        let kept = temp.map(|t| t.keep()).unwrap_or(root);
        step(&format!(
            "kept {} (state/, logs, app/releases/)",
            kept.display()
        ));
    }
    Ok(v2_ok && failed == 0)
}

/// Builds `releases/<version>.tar.gz` of the demo app and its manifest; returns the manifest path.
fn write_release(root: &Path, exe: &Path, version: &str, listen: &str) -> anyhow::Result<PathBuf> {
    let archive = root.join(format!("demo-{version}.tar.gz"));
    let file = std::fs::File::create(&archive)?;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    let body = format!("demo app {version}\n");
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "VERSION", body.as_bytes())?;
    tar.into_inner()?.finish()?;
    let checksum = hex::encode(Sha256::digest(std::fs::read(&archive)?));

    let manifest = root.join(format!("{version}.yml"));
    let yaml = format!(
        r#"# The demo app, {version}: generated by `cutover demo`
src: file://{archive}
checksum: {checksum}
dest: {dest}
commands:
  pre:
    - echo "pre hook: about to roll out {version}"
  success:
    - echo "success hook: {version} is live"
  failure:
    - echo "failure hook: {version} did not go live"
app:
  name: demo
  version: {version}
  run: "'{exe}' demo-app --port {{port}}"
  listen: {listen}
  instances: 2
  env:
    DEMO_VERSION: {version}
  health:
    path: /healthz
    interval: 200ms
    timeout: 1s
    healthy: 2
    deadline: 30s
  drain_timeout: 5s
  stop_timeout: 5s
"#,
        archive = archive.display(),
        dest = root.join("app").display(),
        exe = exe.display(),
    );
    std::fs::write(&manifest, yaml)?;
    Ok(manifest)
}

/// Runs the real agent as a stretcher user would: the manifest URL on stdin.
fn agent(exe: &Path, root: &Path, socket: &Path, manifest: &Path) -> anyhow::Result<ExitStatus> {
    let mut child = Command::new(exe)
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(root.join("agent-state"))
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot start the agent")?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "file://{}", manifest.display())?;
    }
    Ok(child.wait()?)
}

/// Keep-alive clients hammering `url` until `stop`, tallying answers by version.
async fn load(url: String, clients: usize, tally: Arc<LoadTally>, stop: Arc<AtomicBool>) {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, tally, stop) = (url.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build();
            let Ok(client) = client else { return };
            while !stop.load(Ordering::Relaxed) {
                let answer = match client.get(&url).send().await {
                    Ok(resp) if resp.status().is_success() => resp.text().await.ok(),
                    _ => None,
                };
                match answer {
                    Some(body) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        if body.contains("v2") {
                            tally.v2.fetch_add(1, Ordering::Relaxed);
                        } else {
                            tally.v1.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// The supervisor child process; killed on drop if the tour did not stop it.
struct Supervisor {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl Supervisor {
    fn start(exe: &Path, root: &Path, socket: &Path) -> anyhow::Result<Supervisor> {
        let log = root.join("supervisor.log");
        let child = Command::new(exe)
            .arg("supervise")
            .arg("--state-dir")
            .arg(root.join("state"))
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start `cutover supervise`")?;
        Ok(Supervisor {
            child: Some(child),
            socket: socket.to_path_buf(),
            log,
        })
    }

    fn wait_ready(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let socket = self.socket.clone();
        let log = self.log.clone();
        wait_for("the supervisor's control socket", deadline, || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        })
        .with_context(|| format!("see {}", log.display()))
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ensure_ok(status: ExitStatus, what: &str) -> anyhow::Result<()> {
    if !status.success() {
        bail!("{what} failed ({status}); see the lines above");
    }
    Ok(())
}

/// Waits for `condition` with a deadline; the tour's only waiting primitive.
fn wait_for(
    what: &str,
    deadline: Duration,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > deadline {
            bail!("timed out after {}s waiting for {what}", deadline.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn step(msg: &str) {
    println!("==> {msg}");
}
