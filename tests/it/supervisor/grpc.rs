//! gRPC through the proxy (`upstream: h2c` to instances that speak HTTP/2 only, `h2c: true` to
//! clients): messages and trailers pass both ways, a blue-green deploy under a load of calls
//! fails none, and a release whose calls end in `grpc-status: 13` is caught by the canary
//! analysis as a release answering 5xx would be. The server is the demo app's echo method, run
//! with `--h2c` (its health checks are HTTP/2 too); the client is the test's own.

use std::time::Duration;

use cutover::protocol::app::Upstream;
use cutover::protocol::{AppSpec, ErrorKind, ReleaseState};

use crate::support::app::{self, App};
use crate::support::control_socket::{error_of, state_of};
use crate::support::grpc;
use crate::support::supervisor::ROLLOUT;

fn grpc(spec: &mut AppSpec) {
    spec.run.push_str(" --h2c");
    spec.h2c = true;
    spec.upstream = Upstream::H2c;
}

#[test]
fn grpc_calls_pass_with_their_trailers_and_a_blue_green_deploy_fails_none() {
    let mut app = App::new("echo");
    app.tweak = grpc;
    let supervisor = app.serving(&["v1", "v2"]);

    grpc::echo_then_blue_green_under_load(&app, &supervisor);
}

#[test]
fn a_release_whose_calls_fail_with_grpc_status_13_is_backed_out_by_the_canary() {
    let mut app = App::new("echo");
    app.tweak = |spec| {
        grpc(spec);
        app::canary(spec, &["50%"], Duration::from_secs(1), 30);
        spec.canary.max_p99_ratio = 10.0;
    };
    app.faults = vec![("v2".to_owned(), "--grpc-status 13".to_owned())];
    let supervisor = app.serving(&["v1", "v2"]);
    let load = grpc::load(app.listen, 4);
    load.wait_for_more_answers(100, ROLLOUT);

    let (kind, message) = error_of(supervisor.deploy(&app, "v2"));
    assert_eq!(kind, ErrorKind::DeployFailed, "{message}");
    assert!(message.contains("above max_error_rate"), "{message}");
    load.wait_for_more_answers(100, ROLLOUT);
    let report = load.stop();
    assert_eq!(report.socket_errors, 0, "no call broke: {report:?}");
    assert!(
        report.failed.get(&13).copied().unwrap_or(0) > 0,
        "some calls reached the canary and failed: {report:?}"
    );
    let releases = supervisor.releases(&app);
    assert_eq!(state_of(&releases, "v2"), Some(ReleaseState::Bad));
    assert_eq!(state_of(&releases, "v1"), Some(ReleaseState::Live));
    let reply = grpc::call(app.listen, b"still there").expect("v1 answers");
    assert_eq!(reply.status, 0);
}
