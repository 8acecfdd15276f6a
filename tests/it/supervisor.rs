//! The supervisor end to end: blue-green under load, rollback, crash recovery, the control socket.
//!
//! Every test runs the real `cutover supervise` and real `cutover demo-app` instances, and sends
//! real HTTP through the supervisor's proxy.

mod access_log;
mod acme;
mod acme_ca;
mod canary;
mod dashboard;
mod grpc;
mod grpc_tls;
mod hold;
mod hosts;
mod json_log;
mod limits;
mod metrics;
mod ports;
mod restart;
mod strangers;
mod strays;
mod tcp;
mod tls;
mod websocket;

use std::fs;
use std::time::Duration;

use cutover::protocol::{ErrorKind, ReleaseState, Request, Response, StatusRequest, StopRequest};

use crate::support::app::App;
use crate::support::control_socket::{deploy_request, error_of, request_at, state_of};
use crate::support::load::Load;
use crate::support::procs::alive;
use crate::support::request::exchange;
use crate::support::supervisor::{Supervisor, ROLLOUT};
use crate::support::wait_until;

#[test]
fn blue_green_under_load_loses_no_request() {
    let mut app = App::new("shop");
    app.tweak = |spec| spec.instances = 2;
    let supervisor = app.serving(&["v1", "v2"]);
    let v1_pids = supervisor.live_pids(&app);
    assert_eq!(v1_pids.len(), 2, "two v1 instances");

    let load = Load::start(app.listen, 4, "/");
    load.wait_for_more_ok(50, ROLLOUT);
    supervisor.deploy_ok(&app, "v2");
    load.wait_for_more_ok(50, ROLLOUT);
    let report = load.stop();

    assert_eq!(
        report.failures(),
        0,
        "failed requests during the switch: {report:?}"
    );
    assert!(
        report.versions.get("v2").copied().unwrap_or(0) > 0,
        "v2 answered: {report:?}"
    );
    let current = fs::read_link(app.dest.join("current")).expect("current is a symlink");
    assert_eq!(current, std::path::Path::new("releases/v2"));
    wait_until("the v1 instances to be stopped", ROLLOUT, || {
        v1_pids.iter().all(|pid| !alive(*pid))
    });
    let releases = supervisor.releases(&app);
    assert_eq!(state_of(&releases, "v2"), Some(ReleaseState::Live));
    assert_eq!(state_of(&releases, "v1"), Some(ReleaseState::Previous));
}

#[test]
fn a_failing_release_is_rolled_back_while_the_old_one_keeps_serving() {
    let mut app = App::new("shop");
    app.faults = vec![
        ("boot-crash".into(), "--fail-boot".into()),
        ("never-healthy".into(), "--never-healthy".into()),
        ("late-crash".into(), "--crash-after 1".into()),
    ];
    app.tweak = |spec| match spec.version.as_deref() {
        Some("never-healthy") => spec.health.deadline = Duration::from_secs(3),
        // It must stay healthy for 3s before it takes traffic; it crashes after 1s.
        Some("late-crash") => spec.health.min_healthy_time = Duration::from_secs(3),
        _ => {}
    };
    let supervisor = app.serving(&["v1", "boot-crash", "never-healthy", "late-crash"]);
    let v1_pids = supervisor.live_pids(&app);

    let load = Load::start(app.listen, 2, "/");
    load.wait_for_more_ok(20, ROLLOUT);
    for (version, why) in [
        ("boot-crash", "crashed at boot: exit code 3"),
        ("never-healthy", "not healthy after 3s"),
        ("late-crash", "crashed at boot: exit code 1"),
    ] {
        let (kind, message) = error_of(supervisor.deploy(&app, version));
        assert_eq!(kind, ErrorKind::DeployFailed, "{version}: {message}");
        assert!(message.contains(why), "{version}: {message}");
        assert!(message.ends_with("kept v1 serving"), "{version}: {message}");
        let releases = supervisor.releases(&app);
        assert_eq!(state_of(&releases, version), Some(ReleaseState::Bad));
        assert_eq!(state_of(&releases, "v1"), Some(ReleaseState::Live));
    }
    load.wait_for_more_ok(20, ROLLOUT);
    let report = load.stop();
    assert_eq!(report.failures(), 0, "v1 must keep serving: {report:?}");
    assert_eq!(report.versions.keys().collect::<Vec<_>>(), ["v1"]);
    assert_eq!(
        supervisor.live_pids(&app),
        v1_pids,
        "v1 was never restarted"
    );
    let status = supervisor.status(&app);
    assert_eq!(status.instances.len(), 1, "candidates are gone: {status:?}");

    // A version marked bad is refused outright: roll forward instead.
    let (kind, message) = error_of(supervisor.deploy(&app, "boot-crash"));
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(message.contains("is marked bad"), "{message}");
}

#[test]
fn a_release_that_crash_loops_after_its_switch_is_rolled_back_automatically() {
    let mut app = App::new("shop");
    // Healthy within a few checks, so it goes live; then it dies a second after every boot.
    app.faults = vec![("v2".into(), "--crash-after 1".into())];
    let supervisor = Supervisor::start_in(app.home());
    app.place("v1");
    app.place("v2");
    supervisor.deploy_ok(&app, "v1");
    supervisor.deploy_ok(&app, "v2");

    // Five exits within a minute (restarts back off from 0.5s) make it crash-looping.
    wait_until("the automatic rollback to v1", ROLLOUT, || {
        supervisor.live_version("shop").as_deref() == Some("v1")
    });
    app.wait_serving("v1");
    let releases = supervisor.releases(&app);
    let v2 = releases
        .iter()
        .find(|r| r.version == "v2")
        .expect("v2 listed");
    assert_eq!(v2.state, ReleaseState::Bad);
    let reason = v2.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("crash-looping after it went live"),
        "{reason}"
    );
    assert!(reason.contains("exit code 1"), "{reason}");
}

#[test]
fn kill_9_while_idle_readopts_the_same_instances() {
    let mut app = App::new("shop");
    app.tweak = |spec| spec.instances = 2;
    let mut supervisor = app.serving(&["v1"]);
    let pids = supervisor.live_pids(&app);

    supervisor.kill_9();
    assert!(app.get().is_err(), "the proxy died with its supervisor");
    assert!(
        pids.iter().all(|pid| alive(*pid)),
        "instances outlive the supervisor"
    );

    let supervisor = Supervisor::start_in(app.home());
    app.wait_serving("v1");
    let status = supervisor.status(&app);
    assert_eq!(
        supervisor.live_pids(&app),
        pids,
        "same processes: {status:?}"
    );
    assert!(
        status.instances.iter().all(|i| i.restarts == 0),
        "{status:?}"
    );
    assert!(
        supervisor.log().contains("re-adopted"),
        "{}",
        supervisor.log()
    );
}

#[test]
fn kill_9_mid_deploy_stops_the_candidate_and_keeps_the_stable_release() {
    let mut app = App::new("shop");
    // The candidate takes a minute to listen: the deploy is surely in flight when we kill.
    app.faults = vec![("v2".into(), "--boot-delay 60000".into())];
    app.tweak = |spec| spec.health.deadline = Duration::from_secs(120);
    let mut supervisor = app.serving(&["v1", "v2", "v3"]);
    let v1_pids = supervisor.live_pids(&app);

    let deploying = {
        let (socket, request) = (supervisor.socket.clone(), deploy_request(&app, "v2"));
        std::thread::spawn(move || request_at(&socket, &request))
    };
    let mut candidate = None;
    wait_until("the v2 candidate to run", ROLLOUT, || {
        candidate = supervisor
            .status(&app)
            .instances
            .iter()
            .find(|i| i.version == "v2")
            .and_then(|i| i.pid);
        candidate.is_some()
    });
    let candidate = candidate.expect("a candidate pid");
    let phase = supervisor.status(&app).phase;
    assert!(
        phase.starts_with("deploying v2: waiting for health (0/1 healthy"),
        "{phase}"
    );
    let (kind, message) = error_of(supervisor.deploy(&app, "v3"));
    assert_eq!(kind, ErrorKind::Busy, "{message}");

    supervisor.kill_9();
    let _ = deploying.join();
    assert!(alive(candidate), "the candidate outlived the supervisor");

    let supervisor = Supervisor::start_in(app.home());
    wait_until("the zombie candidate to be stopped", ROLLOUT, || {
        !alive(candidate)
    });
    app.wait_serving("v1");
    assert_eq!(
        supervisor.live_pids(&app),
        v1_pids,
        "v1 kept, not restarted"
    );
    let status = supervisor.status(&app);
    assert_eq!(status.live_version.as_deref(), Some("v1"));
    assert!(
        status.instances.iter().all(|i| i.version == "v1"),
        "{status:?}"
    );
    assert!(
        supervisor
            .log()
            .contains("resolved an interrupted rollout of v2"),
        "{}",
        supervisor.log()
    );
    // The interrupted release is not blamed: it can be deployed again.
    assert_ne!(
        state_of(&supervisor.releases(&app), "v2"),
        Some(ReleaseState::Bad)
    );
}

#[test]
fn rollback_goes_to_the_previous_or_a_named_release_and_marks_the_other_bad() {
    let app = App::new("shop");
    let supervisor = Supervisor::start_in(app.home());
    for version in ["v1", "v2", "v3"] {
        app.place(version);
        supervisor.deploy_ok(&app, version);
    }
    app.wait_serving("v3");

    match supervisor.rollback(&app, None) {
        Response::RolledBack(outcome) => {
            assert_eq!(outcome.version, "v2");
            assert_eq!(outcome.previous.as_deref(), Some("v3"));
        }
        other => panic!("rollback: {other:?}"),
    }
    app.wait_serving("v2");
    let releases = supervisor.releases(&app);
    assert_eq!(state_of(&releases, "v3"), Some(ReleaseState::Bad));
    assert_eq!(state_of(&releases, "v2"), Some(ReleaseState::Live));
    assert_eq!(state_of(&releases, "v1"), Some(ReleaseState::Previous));

    match supervisor.rollback(&app, Some("v1")) {
        Response::RolledBack(outcome) => assert_eq!(outcome.version, "v1"),
        other => panic!("rollback to v1: {other:?}"),
    }
    app.wait_serving("v1");
    assert_eq!(
        state_of(&supervisor.releases(&app), "v2"),
        Some(ReleaseState::Bad)
    );

    for (target, why) in [("v3", "marked bad"), ("v9", "never ran")] {
        let (kind, message) = error_of(supervisor.rollback(&app, Some(target)));
        assert_eq!(kind, ErrorKind::BadRequest, "{message}");
        assert!(message.contains(why), "{message}");
    }
    // Nothing good is left behind v1.
    let (kind, message) = error_of(supervisor.rollback(&app, None));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
}

#[test]
fn pruning_keeps_the_live_release_and_the_rollback_target() {
    let mut app = App::new("shop");
    app.tweak = |spec| spec.keep_releases = 2;
    let supervisor = Supervisor::start_in(app.home());
    for version in ["v1", "v2", "v3", "v4"] {
        app.place(version);
        supervisor.deploy_ok(&app, version);
    }
    let on_disk = |v: &str| app.dest.join("releases").join(v).is_dir();
    assert!(
        on_disk("v4") && on_disk("v3"),
        "live and rollback target kept"
    );
    assert!(!on_disk("v1") && !on_disk("v2"), "older releases pruned");

    // Roll back to v3: v4 is bad, v3 live; a new v5 must not prune v3 (live) nor lose its
    // rollback target, and the bad v4 goes first.
    assert!(matches!(
        supervisor.rollback(&app, None),
        Response::RolledBack(_)
    ));
    app.place("v5");
    supervisor.deploy_ok(&app, "v5");
    assert!(
        on_disk("v5") && on_disk("v3"),
        "live v5 and rollback target v3 kept"
    );
    assert!(!on_disk("v4"), "the bad v4 was pruned");
}

#[test]
fn a_corrupt_state_file_is_set_aside_with_a_clear_message() {
    let home = tempfile::tempdir().expect("temp dir");
    let state_dir = home.path().join("state");
    fs::create_dir_all(&state_dir).expect("state dir");
    fs::write(state_dir.join("state.json"), b"{ this is not json").expect("write");

    let supervisor = Supervisor::start_in(home.path());
    let aside: Vec<String> = fs::read_dir(&supervisor.state_dir)
        .expect("list state dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "set aside once: {aside:?}");
    let log = supervisor.log();
    assert!(
        log.contains("is unreadable") && log.contains(&aside[0]),
        "{log}"
    );
    match supervisor.request(Request::Status(StatusRequest { app: None })) {
        Response::Status(report) => assert!(report.apps.is_empty()),
        other => panic!("status: {other:?}"),
    }
}

#[test]
fn stop_ends_the_instances_and_forgets_the_app() {
    let app = App::new("shop");
    let supervisor = app.serving(&["v1"]);
    let pids = supervisor.live_pids(&app);

    let stopped = supervisor.request(Request::Stop(StopRequest {
        app: app.name.clone(),
    }));
    assert!(
        matches!(stopped, Response::Stopped(ref s) if s.stopped == 1),
        "{stopped:?}"
    );
    assert!(pids.iter().all(|pid| !alive(*pid)), "instances stopped");
    wait_until("the public address to close", ROLLOUT, || {
        app.get().is_err()
    });
    let (kind, _) = error_of(supervisor.request(Request::Status(StatusRequest {
        app: Some(app.name.clone()),
    })));
    assert_eq!(kind, ErrorKind::NotFound);
    // And it can come back on the same address.
    supervisor.deploy_ok(&app, "v1");
    app.wait_serving("v1");
}

#[test]
fn a_healthy_instance_shows_no_failure_from_its_boot() {
    let mut app = App::new("shop");
    // Listening only after 600 ms: the first health checks are refused.
    app.faults = vec![("v1".into(), "--boot-delay 600".into())];
    let supervisor = app.serving(&["v1"]);
    let status = supervisor.status(&app);
    let instances = &status.instances;
    assert_eq!(instances.len(), 1, "{status:?}");
    assert_eq!(instances[0].state, "healthy", "{status:?}");
    assert_eq!(
        instances[0].last_failure, None,
        "the refused checks of its boot are not the running instance's: {status:?}"
    );
}

#[test]
fn an_apps_idle_timeout_closes_its_unused_client_connections() {
    let mut app = App::new("shop");
    app.tweak = |spec| spec.idle_timeout = Duration::from_millis(300);
    let supervisor = app.serving(&["v1"]);

    // No `Connection: close`: only the app's own setting, far below the 30 s default, can close
    // it within the 10 s read.
    let seen = exchange(
        app.listen,
        b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n",
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("not closed within 10 s: {e}"));
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        seen.contains("hello from v1"),
        "answered before it idled: {seen}"
    );

    // A zero timeout would close every connection at once: refused, naming the key.
    app.tweak = |spec| spec.idle_timeout = Duration::ZERO;
    let (kind, message) = error_of(supervisor.deploy(&app, "v1"));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
    assert!(message.contains("idle_timeout"), "{message}");
}
