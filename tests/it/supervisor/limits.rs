//! What clients may hold: a supervisor whose limit on open files is low, flooded with more idle
//! connections than that limit, keeps answering `cutover status`, deploys, keeps its instances
//! healthy, answers new clients and finishes the requests in progress (it raised its soft limit
//! to the hard one at start); and an app's `body_timeout`, `send_timeout` and `max_connections`
//! reach its proxy, a zero refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use nix::sys::resource::{setrlimit, Resource};

use cutover::protocol::ErrorKind;

use super::harness::{error_of, App, Reaper, Supervisor, ROLLOUT};
use crate::support::{cutover, wait_until};

const SOFT: u64 = 128;
/// Small enough for a test, and the flood below is larger: the supervisor's budget of client
/// connections is 64, the rest is its reserve.
const HARD: u64 = 256;
const FLOOD: usize = 300;

/// Sends `request` on a connection of its own; what comes back until the proxy closes it.
fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// `GET path`; the status line and body.
fn get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn a_flood_of_idle_connections_starves_neither_the_control_socket_nor_the_health_checks() {
    let home = tempfile::tempdir().expect("temp dir");
    let app = App::new(home.path(), "shop");
    let _reaper = Reaper(vec![app.dest.clone()]);
    let supervisor = Supervisor::start_with(home.path(), |command| {
        // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
        unsafe {
            command.pre_exec(|| Ok(setrlimit(Resource::RLIMIT_NOFILE, SOFT, HARD)?));
        }
    });
    app.place("v1");
    app.place("v2");
    supervisor.deploy_ok(&app, "v1");
    app.wait_serving("v1");

    let listen = app.listen;
    let in_progress = std::thread::spawn(move || get(listen, "/slow?ms=3000"));
    wait_until("the slow request in flight", ROLLOUT, || {
        supervisor.status(&app).instances[0].in_flight == 1
    });
    // The kernel completes every connect (the listen backlog holds 1024); the proxy takes what
    // it can.
    let before = open_fds(supervisor.pid());
    let flood: Vec<TcpStream> = (0..FLOOD)
        .map(|n| TcpStream::connect(app.listen).unwrap_or_else(|e| panic!("connect {n}: {e}")))
        .collect();
    wait_until("the proxy to take most of its budget", ROLLOUT, || {
        open_fds(supervisor.pid()) >= before + 60
    });

    let status = cutover()
        .env("CUTOVER_SOCKET", &supervisor.socket)
        .args(["status", "shop"])
        .output()
        .expect("run cutover status");
    assert!(
        status.status.success(),
        "cutover status failed: {}\n{}",
        String::from_utf8_lossy(&status.stderr),
        supervisor.log()
    );
    let answer = get(app.listen, "/");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("hello from v1 "),
        "a new client: {answer:?}"
    );
    supervisor.deploy_ok(&app, "v2");
    app.wait_serving("v2");
    let answer = in_progress.join().unwrap();
    assert!(
        answer.ends_with("slow done\n"),
        "the request in progress: {answer:?}"
    );
    let status = supervisor.status(&app);
    for instance in &status.instances {
        assert_eq!(instance.state, "healthy", "{status:?}");
        assert_eq!(instance.last_failure, None, "{status:?}");
    }
    let log = supervisor.log();
    assert!(
        log.contains("from its limit on open files) in use"),
        "{log}"
    );
    assert!(!log.contains("health now Unhealthy"), "{log}");
    assert!(!log.contains("health check skipped"), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
    drop(flood);

    // It raised its soft limit to the hard one, and gave its instances the one it started with.
    assert_eq!(open_files(supervisor.pid()), (HARD, HARD));
    let pid = status.instances[0].pid.expect("a running instance");
    assert_eq!(open_files(pid), (SOFT, HARD), "instance {pid}");
}

/// How many descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |fds| fds.count())
}

/// The soft and hard limits on open files of process `pid`.
fn open_files(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a limit on open files");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn an_apps_body_timeout_cuts_a_stalled_body_and_zero_limits_are_refused() {
    let home = tempfile::tempdir().expect("temp dir");
    let mut app = App::new(home.path(), "shop");
    app.tweak = |spec| spec.body_timeout = Duration::from_millis(500);
    let (_reaper, supervisor) = app.serving(home.path(), &["v1"]);

    // Far below the 60 s default (and the 30 s read timeout): only the app's own setting cuts it
    // in time.
    let answer = exchange(
        app.listen,
        "POST /upload HTTP/1.1\r\nHost: shop\r\nContent-Length: 100\r\n\r\nsome",
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let status = supervisor.status(&app);
    assert_eq!(status.instances[0].errors_5xx, 0, "{status:?}");

    for key in ["body_timeout", "send_timeout", "max_connections"] {
        app.tweak = match key {
            "body_timeout" => |spec| spec.body_timeout = Duration::ZERO,
            "send_timeout" => |spec| spec.send_timeout = Duration::ZERO,
            _ => |spec| spec.max_connections = 0,
        };
        let (kind, message) = error_of(supervisor.deploy(&app, "v1"));
        assert_eq!(kind, ErrorKind::BadRequest, "{message}");
        assert!(message.contains(key), "{message}");
    }
}
