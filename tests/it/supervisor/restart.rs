//! Restarting the supervisor itself under load: handed over (`supervise --take-over`) or with its
//! sockets held by systemd socket activation, no connection is refused, no request fails, and the
//! app's instances are the same processes before and after.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cutover::protocol::{Request, Response, StatusRequest, StopRequest};

use crate::support::app::App;
use crate::support::control_socket::request_at;
use crate::support::load::{Load, LoadReport};
use crate::support::procs::alive;
use crate::support::request;
use crate::support::supervisor::{Supervisor, ROLLOUT};
use crate::support::wait_until;

/// A client that opens a fresh connection for every request, so that every connect during a
/// restart is tried: the refused ones and failed requests are kept with their messages.
struct FreshConnections {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    ok: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FreshConnections {
    fn start(app: &App) -> FreshConnections {
        let stop: Arc<AtomicBool> = Arc::default();
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let ok: Arc<Mutex<u64>> = Arc::default();
        let thread = {
            let (stop, failures, ok) = (stop.clone(), failures.clone(), ok.clone());
            let listen = app.listen;
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match request::get(listen, "/") {
                        Ok(answer) if answer.status == 200 => *ok.lock().unwrap() += 1,
                        other => failures.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            })
        };
        FreshConnections {
            stop,
            failures,
            ok,
            thread: Some(thread),
        }
    }

    fn ok(&self) -> u64 {
        *self.ok.lock().unwrap()
    }

    fn stop(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        (self.ok(), self.failures.lock().unwrap().clone())
    }
}

/// A CLI-like client asking `status` over and over on the control socket, keeping every failure.
struct StatusAsker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl StatusAsker {
    fn start(socket: &std::path::Path) -> StatusAsker {
        let stop: Arc<AtomicBool> = Arc::default();
        let thread = {
            let (stop, socket) = (stop.clone(), socket.to_owned());
            std::thread::spawn(move || {
                let (mut ok, mut failures) = (0, Vec::new());
                let request = Request::Status(StatusRequest { app: None });
                while !stop.load(Ordering::Relaxed) {
                    match request_at(&socket, &request) {
                        Ok(Response::Status(_)) => ok += 1,
                        other => failures.push(format!("{other:?}")),
                    }
                }
                (ok, failures)
            })
        };
        StatusAsker {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// Both loads have seen more successful requests since the call: traffic flows.
fn wait_flowing(load: &Load, fresh: &FreshConnections) {
    load.wait_for_more_ok(50, ROLLOUT);
    let start = fresh.ok();
    wait_until("more fresh-connection requests", ROLLOUT, || {
        fresh.ok() >= start + 10
    });
}

fn assert_clean(report: &LoadReport, fresh: (u64, Vec<String>), log: &str) {
    assert_eq!(
        report.failures(),
        0,
        "keep-alive clients saw failures: {report:?}\n{log}"
    );
    let (ok, failures) = fresh;
    assert!(
        failures.is_empty(),
        "{} of {} fresh connections failed (first: {:?})\n{log}",
        failures.len(),
        ok + failures.len() as u64,
        failures.first()
    );
}

/// The end of a restart test: no request, connection or status query failed across the
/// restarts, and the app's instances are the processes from before.
fn nothing_dropped(
    supervisor: &Supervisor,
    app: &App,
    load: Load,
    fresh: FreshConnections,
    asker: StatusAsker,
    pids: &[u32],
    across: &str,
) {
    let report = load.stop();
    assert_clean(&report, fresh.stop(), &supervisor.log());
    let (asked, failures) = asker.stop();
    assert!(
        asked > 0 && failures.is_empty(),
        "{} of {} status requests failed across the {across} (first: {:?})",
        failures.len(),
        asked + failures.len() as u64,
        failures.first()
    );
    assert_eq!(supervisor.live_pids(app), pids, "re-adopted, not restarted");
}

#[test]
fn handed_over_under_load_no_connection_is_refused_and_the_instances_stay() {
    let mut app = App::new("shop");
    app.tweak = |spec| spec.instances = 2;
    let mut supervisor = app.serving(&["v1", "v2"]);
    let pids = supervisor.live_pids(&app);

    let load = Load::start(app.listen, 4, "/");
    let fresh = FreshConnections::start(&app);
    let asker = StatusAsker::start(&supervisor.socket);
    wait_flowing(&load, &fresh);
    for _ in 0..3 {
        let old = supervisor.pid();
        supervisor.take_over();
        assert!(!alive(old), "the old supervisor {old} exited");
        wait_flowing(&load, &fresh);
    }
    nothing_dropped(&supervisor, &app, load, fresh, asker, &pids, "hand-overs");
    let status = supervisor.status(&app);
    assert!(
        status.instances.iter().all(|i| i.restarts == 0),
        "{status:?}"
    );
    let log = supervisor.log();
    assert_eq!(
        log.matches("takes over from this supervisor").count(),
        3,
        "{log}"
    );
    assert!(
        log.contains("handed over 2 socket(s)"),
        "control and app sockets: {log}"
    );
    // The last supervisor is a full one: it deploys.
    supervisor.deploy_ok(&app, "v2");
    app.wait_serving("v2");
}

#[test]
fn a_successor_that_cannot_start_hands_everything_back_and_nothing_is_dropped() {
    let app = App::new("shop");
    let mut supervisor = app.serving(&["v1"]);
    let pids = supervisor.live_pids(&app);
    let load = Load::start(app.listen, 4, "/");
    let fresh = FreshConnections::start(&app);
    wait_flowing(&load, &fresh);

    // It receives the sockets, then cannot bind its own --socket (the parent is a file): it exits.
    let blocker = app.home().join("a-file");
    std::fs::write(&blocker, "").expect("write a file");
    let mut successor = supervisor.spawn_successor(&blocker.join("cutover.sock"));
    let mut status = None;
    wait_until("the successor to give up", ROLLOUT, || {
        status = successor.try_wait().expect("wait on the successor");
        status.is_some()
    });
    assert!(!status.unwrap().success(), "{}", supervisor.log());
    wait_until("the old supervisor to take its apps back", ROLLOUT, || {
        supervisor.log().contains("taking the apps back")
    });
    wait_flowing(&load, &fresh);
    let report = load.stop();
    assert_clean(&report, fresh.stop(), &supervisor.log());
    assert_eq!(supervisor.live_pids(&app), pids, "same instances");

    // Still a whole supervisor: a later hand-over works.
    supervisor.take_over();
    assert_eq!(supervisor.live_pids(&app), pids, "same instances");
}

#[test]
fn restarted_with_systemd_socket_activation_under_load_no_connection_is_refused() {
    let mut app = App::new("shop");
    app.tweak = |spec| spec.instances = 2;
    let supervisor = Supervisor::start_activated(app.home(), app.listen);
    app.place("v1");
    supervisor.deploy_ok(&app, "v1");
    app.wait_serving("v1");
    let pids = supervisor.live_pids(&app);
    let log = supervisor.log();
    assert!(
        log.contains(&format!("listening socket {} from systemd", app.listen)),
        "{log}"
    );

    let load = Load::start(app.listen, 4, "/");
    let fresh = FreshConnections::start(&app);
    let asker = StatusAsker::start(&supervisor.socket);
    wait_flowing(&load, &fresh);
    for _ in 0..2 {
        let old = supervisor.activated_pid().expect("cutover supervise runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM the supervisor");
        wait_until("the supervisor to be started again", ROLLOUT, || {
            supervisor.activated_pid().is_some_and(|pid| pid != old)
        });
        wait_flowing(&load, &fresh);
    }
    nothing_dropped(&supervisor, &app, load, fresh, asker, &pids, "restarts");
    let log = supervisor.log();
    assert_eq!(log.matches("re-adopted shop-v1-0").count(), 2, "{log}");
    assert!(
        !log.contains("could not bind") && !log.contains("cannot listen"),
        "{log}"
    );
}

#[test]
fn the_systemd_units_pass_the_default_control_socket_and_keep_the_apps_running() {
    let manifests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let read = |name: &str| {
        std::fs::read_to_string(manifests.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let settings = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
            .map(str::to_owned)
            .collect()
    };
    let socket = settings(&read("cutover.socket"));
    let service = settings(&read("cutover.service"));
    // `cutover supervise` as root (what the service runs) looks for its socket here.
    for line in ["ListenStream=/run/cutover/cutover.sock", "SocketMode=0600"] {
        assert!(
            socket.iter().any(|l| l == line),
            "cutover.socket lacks {line}: {socket:?}"
        );
    }
    for line in [
        "ExecStart=/usr/local/bin/cutover supervise",
        "KillMode=process",
        "Requires=cutover.socket",
        "StateDirectory=cutover",
        // The supervisor raises its soft limit to the hard one; its apps get 1024 back.
        "LimitNOFILE=1024:524288",
    ] {
        assert!(
            service.iter().any(|l| l == line),
            "cutover.service lacks {line}: {service:?}"
        );
    }
    // Removing /run/cutover at stop would delete the socket file systemd keeps open.
    assert!(
        !service.iter().any(|l| l.starts_with("RuntimeDirectory=")),
        "{service:?}"
    );
}

#[test]
fn an_app_stopped_under_socket_activation_can_be_deployed_again_on_its_socket() {
    let app = App::new("shop");
    let supervisor = Supervisor::start_activated(app.home(), app.listen);
    app.place("v1");
    supervisor.deploy_ok(&app, "v1");
    app.wait_serving("v1");

    let stop = Request::Stop(StopRequest {
        app: app.name.clone(),
    });
    assert!(
        matches!(supervisor.request(stop), Response::Stopped(_)),
        "stop shop"
    );
    // systemd keeps the address bound: a bind of its own would fail, the passed socket serves.
    assert!(
        std::net::TcpListener::bind(app.listen).is_err(),
        "systemd's copy keeps the address"
    );
    supervisor.deploy_ok(&app, "v1");
    app.wait_serving("v1");
    let log = supervisor.log();
    assert!(!log.contains("cannot listen"), "{log}");
    assert!(
        log.contains("for a later deploy (systemd holds it)"),
        "{log}"
    );
}
