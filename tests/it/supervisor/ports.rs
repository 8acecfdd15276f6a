//! Ports that another process takes: between the supervisor choosing a candidate's port and the
//! app binding it, or while a crashed instance waits to restart. The instance moves to a fresh
//! port, the route follows it, and `status` shows where it went.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use cutover::protocol::{InstanceStatus, Response};

use crate::support::app::App;
use crate::support::load::Load;
use crate::support::ports::listening_socket;
use crate::support::procs::{alive, kill_9};
use crate::support::supervisor::{Supervisor, ROLLOUT};
use crate::support::wait_until;

/// The instances of `version` in the app's status.
fn instances_of(supervisor: &Supervisor, app: &App, version: &str) -> Vec<InstanceStatus> {
    supervisor
        .status(app)
        .instances
        .into_iter()
        .filter(|i| i.version == version)
        .collect()
}

fn addr_of(instance: &InstanceStatus) -> SocketAddr {
    instance.addr.parse().expect("an instance address")
}

#[test]
fn a_candidate_whose_port_is_taken_before_it_binds_moves_and_the_deploy_succeeds() {
    let mut app = App::new("shop");
    // v2 waits before it binds: the window in which this test takes its port.
    app.faults = vec![("v2".into(), "--boot-delay 2000".into())];
    let supervisor = app.serving(&["v1", "v2"]);
    let load = Load::start(app.listen, 4, "/");
    load.wait_for_more_ok(50, ROLLOUT);

    let (response, stolen) = std::thread::scope(|scope| {
        let deploy = scope.spawn(|| supervisor.deploy(&app, "v2"));
        let mut candidate = None;
        wait_until("the v2 candidate to be planned", ROLLOUT, || {
            candidate = instances_of(&supervisor, &app, "v2").into_iter().next();
            candidate.is_some()
        });
        let stolen = addr_of(&candidate.expect("a candidate"));
        // Held until the end of the test, listening, as a stranger's server would.
        let thief = TcpListener::bind(stolen).expect("take the candidate's port before it binds");
        let response = deploy.join().expect("the deploy thread");
        drop(thief);
        (response, stolen)
    });
    match response {
        Response::Deployed(outcome) => assert_eq!(outcome.version, "v2"),
        other => panic!(
            "the deploy should succeed, got {other:?}\n{}",
            supervisor.log()
        ),
    }
    load.wait_for_more_ok(50, ROLLOUT);
    let report = load.stop();
    assert_eq!(report.failures(), 0, "failed requests: {report:?}");
    let live = instances_of(&supervisor, &app, "v2");
    assert_eq!(live.len(), 1, "{live:?}");
    assert_ne!(addr_of(&live[0]), stolen, "v2 moved off the taken port");
    assert_eq!(addr_of(&live[0]).ip(), stolen.ip());
    assert!(app.serves("v2"));
    assert!(
        supervisor.log().contains(&format!(
            "port {} was held by another process",
            stolen.port()
        )),
        "{}",
        supervisor.log()
    );
}

#[test]
fn a_crashed_instance_whose_port_was_taken_restarts_on_a_fresh_port() {
    let app = App::new("shop");
    let supervisor = app.serving(&["v1"]);
    let before = instances_of(&supervisor, &app, "v1");
    assert_eq!(before.len(), 1, "{before:?}");
    let old = addr_of(&before[0]);
    kill_9(before[0].pid.expect("a running instance"));
    // The port is free once the process is gone; take it before the restart (after 0.5 s).
    let mut thief = None;
    wait_until(
        "the crashed instance's port to be free",
        Duration::from_secs(10),
        || {
            thief = TcpListener::bind(old).ok();
            thief.is_some()
        },
    );
    let mut after = Vec::new();
    wait_until("v1 to serve again on a fresh port", ROLLOUT, || {
        after = instances_of(&supervisor, &app, "v1");
        after.len() == 1 && after[0].state == "healthy" && addr_of(&after[0]) != old
    });
    assert!(after[0].routed, "{after:?}");
    app.wait_serving("v1");
    drop(thief);
}

#[test]
fn a_socket_activated_instance_serves_on_the_socket_the_supervisor_holds() {
    let mut app = App::new("shop");
    app.tweak = |spec| spec.socket_activation = true;
    // The demo app serves on fd 3 when handed one; binding its port itself would fail, since the
    // supervisor holds it.
    let supervisor = app.serving(&["v1"]);
    let before = instances_of(&supervisor, &app, "v1");
    let addr = addr_of(&before[0]);
    let socket = listening_socket(addr).expect("a socket listening on the instance's port");
    let pid = before[0].pid.expect("a running instance");
    kill_9(pid);
    wait_until("the instance to be gone", Duration::from_secs(10), || {
        !alive(pid)
    });
    // Down, its socket still listens (held by the supervisor): no one can take the port.
    assert_eq!(
        listening_socket(addr),
        Some(socket),
        "the socket outlives the crash"
    );
    let mut after = Vec::new();
    wait_until("v1 to serve again", ROLLOUT, || {
        after = instances_of(&supervisor, &app, "v1");
        after.len() == 1 && after[0].state == "healthy" && after[0].pid != Some(pid)
    });
    assert_eq!(addr_of(&after[0]), addr, "same port");
    assert_eq!(listening_socket(addr), Some(socket), "same socket");
    app.wait_serving("v1");
}
