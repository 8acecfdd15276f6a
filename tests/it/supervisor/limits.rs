//! What clients may hold: a supervisor whose limit on open files is low, flooded with more idle
//! connections than that limit, keeps answering `cutover status`, deploys, keeps its instances
//! healthy, answers new clients and finishes the requests in progress (it raised its soft limit
//! to the hard one at start); and an app's `body_timeout`, `send_timeout` and `max_connections`
//! reach its proxy, a zero refused.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use nix::sys::resource::{setrlimit, Resource};

use cutover::protocol::ErrorKind;

use crate::support::app::App;
use crate::support::control_socket::error_of;
use crate::support::request::Request;
use crate::support::supervisor::{Supervisor, ROLLOUT};
use crate::support::wait_until;

/// Longer than any request here takes on a loaded box, far below the proxy's 60 s defaults.
const READ: Duration = Duration::from_secs(30);

const SOFT: u64 = 128;
/// Small enough for a test, and the flood below is larger: the supervisor's budget of client
/// connections is 64, the rest is its reserve.
const HARD: u64 = 256;
const FLOOD: usize = 300;

#[test]
fn a_flood_of_idle_connections_starves_neither_the_control_socket_nor_the_health_checks() {
    let app = App::new("shop");
    let supervisor = Supervisor::start_with(app.home(), |command| {
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
    let in_progress =
        std::thread::spawn(move || Request::get("/slow?ms=3000").timeout(READ).send(listen));
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

    let status = supervisor.run(&["status", "shop"]);
    assert!(
        status.status.success(),
        "cutover status failed: {}\n{}",
        String::from_utf8_lossy(&status.stderr),
        supervisor.log()
    );
    let answer = Request::get("/").timeout(READ).send(app.listen);
    assert!(
        answer
            .as_ref()
            .is_ok_and(|a| a.status == 200 && a.version() == Some("v1")),
        "a new client: {answer:?}"
    );
    supervisor.deploy_ok(&app, "v2");
    app.wait_serving("v2");
    let answer = in_progress.join().unwrap();
    assert!(
        answer.as_ref().is_ok_and(|a| a.body == "slow done\n"),
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
    let mut app = App::new("shop");
    app.tweak = |spec| spec.body_timeout = Duration::from_millis(500);
    let supervisor = app.serving(&["v1"]);

    // Far below the 60 s default (and the 30 s read timeout): only the app's own setting cuts it
    // in time.
    let answer = Request::new("POST", "/upload")
        .header("Content-Length", "100")
        .body("some")
        .timeout(READ)
        .send(app.listen);
    assert!(answer.as_ref().is_ok_and(|a| a.status == 408), "{answer:?}");
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
