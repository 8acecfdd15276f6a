//! A load generator that keeps requests flowing through the proxy and counts every failure, and
//! `DemoApp`, the real `cutover demo-app` process that load tests aim at.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::request::{try_connect, Request, Sender};
use super::{cutover, free_port, wait_until};

/// A running `cutover demo-app` on a free port of 127.0.0.1; killed on drop.
pub struct DemoApp {
    pub port: u16,
    pub child: Child,
}

impl DemoApp {
    /// Starts `demo-app --version-label VERSION ARGS…` and waits until it accepts connections.
    pub fn start(version: &str, args: &[&str]) -> DemoApp {
        let app = DemoApp::spawn(version, args);
        let addr = app.addr();
        wait_until("demo-app to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        app
    }

    /// Starts it without waiting (for apps that are meant never to listen, or to listen late).
    pub fn spawn(version: &str, args: &[&str]) -> DemoApp {
        let port = free_port();
        let child = cutover()
            .args([
                "demo-app",
                "--port",
                &port.to_string(),
                "--version-label",
                version,
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cutover demo-app");
        DemoApp { port, child }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the app and reaps it: the harshest way an instance can die.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DemoApp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a load run saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// 2xx/3xx responses.
    pub ok: u64,
    /// Responses with another status, by status code.
    pub failed: BTreeMap<u16, u64>,
    /// Connections that broke or could not be made, with the first few messages.
    pub socket_errors: u64,
    pub error_samples: Vec<String>,
    /// How many answers came from each version (the `hello from VERSION` line of the demo app).
    pub versions: BTreeMap<String, u64>,
}

impl LoadReport {
    pub fn failures(&self) -> u64 {
        self.failed.values().sum::<u64>() + self.socket_errors
    }

    fn merge(&mut self, other: &LoadReport) {
        self.ok += other.ok;
        for (status, n) in &other.failed {
            *self.failed.entry(*status).or_default() += n;
        }
        self.socket_errors += other.socket_errors;
        for sample in &other.error_samples {
            if self.error_samples.len() < 10 {
                self.error_samples.push(sample.clone());
            }
        }
        for (version, n) in &other.versions {
            *self.versions.entry(version.clone()).or_default() += n;
        }
    }
}

/// `clients` keep-alive connections sending `GET path` until stopped — back to back, or
/// [paced](Load::paced) — on a runtime of their own so that sync and async tests can both use it.
pub struct Load {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize, path: &str) -> Load {
        Load::run(addr, clients, path, None, None)
    }

    /// [`Load::start`] with every request naming `host` (an app among several on `addr`).
    pub fn for_host(addr: SocketAddr, clients: usize, host: &str, path: &str) -> Load {
        Load::run(addr, clients, path, None, Some(host.to_owned()))
    }

    /// `per_second` requests a second in all, each client on its own clock: light, steady
    /// traffic. Back-to-back clients all pile onto whichever instance stalls, so the side with
    /// the smaller share shows the stalls of a loaded machine more often than the other does;
    /// requests sent on a clock, as independent users send them, do not.
    pub fn paced(addr: SocketAddr, clients: usize, per_second: u32, path: &str) -> Load {
        let every = Duration::from_secs(clients as u64) / per_second.max(1);
        Load::run(addr, clients, path, Some(every), None)
    }

    /// `host`: the `Host` every request names; the address itself unless given.
    fn run(
        addr: SocketAddr,
        clients: usize,
        path: &str,
        every: Option<Duration>,
        host: Option<String>,
    ) -> Load {
        let path = path.to_owned();
        let host = host.unwrap_or_else(|| addr.to_string());
        Load::spawn(clients, move |i, stop, report| {
            // Clocks spread over the period, not ticking all at once.
            let pace = every.map(|every| (every, every * i as u32 / clients as u32));
            client(addr, (host.clone(), path.clone()), pace, stop, report)
        })
    }

    /// `clients` tasks made by `client` (given its index, the stop flag and the shared report,
    /// which it adds to as it goes), run on a runtime of their own until stopped: the one way a
    /// load runs, whatever it sends.
    pub fn spawn<F, Fut>(clients: usize, client: F) -> Load
    where
        F: Fn(usize, Arc<AtomicBool>, Arc<Mutex<LoadReport>>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let thread = {
            let (stop, report) = (stop.clone(), report.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("load runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    let tasks: Vec<_> = (0..clients)
                        .map(|i| tokio::task::spawn_local(client(i, stop.clone(), report.clone())))
                        .collect();
                    for task in tasks {
                        let _ = task.await;
                    }
                });
            })
        };
        Load {
            stop,
            report,
            thread: Some(thread),
        }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> LoadReport {
        self.report.lock().unwrap().clone()
    }

    /// Waits until at least `n` more requests succeeded than at the call (proof traffic flows).
    pub fn wait_for_more_ok(&self, n: u64, deadline: Duration) {
        let start = self.snapshot().ok;
        wait_until(&format!("{n} more successful requests"), deadline, || {
            self.snapshot().ok >= start + n
        });
    }

    /// Waits until at least `n` more requests were answered, well or not, than at the call.
    pub fn wait_for_more_answers(&self, n: u64, deadline: Duration) {
        let answered = |r: &LoadReport| r.ok + r.failed.values().sum::<u64>();
        let start = answered(&self.snapshot());
        wait_until(&format!("{n} more answers"), deadline, || {
            answered(&self.snapshot()) >= start + n
        });
    }

    /// Stops the clients (each finishes its request in flight) and returns the totals.
    pub fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.snapshot()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One client: a keep-alive connection, re-made after any socket error (which is counted); a
/// request every `pace.0` from `pace.1` on if given (one that took longer is followed at once by
/// the next).
async fn client(
    addr: SocketAddr,
    (host, path): (String, String),
    pace: Option<(Duration, Duration)>,
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<LoadReport>>,
) {
    let mut local = LoadReport::default();
    let mut sender = None;
    let mut clock = pace.map(|(every, offset)| {
        let mut clock = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        clock
    });
    while !stop.load(Ordering::Relaxed) {
        if let Some(clock) = clock.as_mut() {
            clock.tick().await;
        }
        if sender.is_none() {
            match try_connect(addr).await {
                Ok(s) => sender = Some(s),
                Err(err) => {
                    note_error(&mut local, err);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        match one_request(s, &host, &path).await {
            Ok((status, body, close)) => {
                // The server said this answer is the connection's last (a proxy letting its
                // clients go at a restart): like any HTTP client, reconnect for the next request.
                if close {
                    sender = None;
                }
                if status < 400 {
                    local.ok += 1;
                } else {
                    *local.failed.entry(status).or_default() += 1;
                }
                if let Some(version) = body
                    .strip_prefix("hello from ")
                    .and_then(|r| r.split(' ').next())
                {
                    *local.versions.entry(version.to_owned()).or_default() += 1;
                }
            }
            Err(err) => {
                note_error(&mut local, err);
                sender = None;
            }
        }
        // Published after every request so a snapshot is exact; tests are not benchmarks.
        shared.lock().unwrap().merge(&local);
        local = LoadReport::default();
    }
    shared.lock().unwrap().merge(&local);
}

pub fn note_error(report: &mut LoadReport, message: String) {
    report.socket_errors += 1;
    if report.error_samples.len() < 10 {
        report.error_samples.push(message);
    }
}

async fn one_request(
    sender: &mut Sender,
    host: &str,
    path: &str,
) -> Result<(u16, String, bool), String> {
    let request = Request::get(path).header("host", host);
    let answer = tokio::time::timeout(Duration::from_secs(30), request.try_send_on(sender))
        .await
        .map_err(|_| "no response within 30s".to_owned())??;
    let close = answer
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok((answer.status, answer.body, close))
}
