//! `hold_requests` through a real supervisor: when an app's only instance dies under load, the
//! requests that come before its restart is healthy wait for it instead of failing.

use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::support::app::App;
use crate::support::load::Load;
use crate::support::supervisor::ROLLOUT;
use crate::support::wait_until;

#[test]
fn requests_wait_for_the_only_instance_to_come_back() {
    let mut app = App::new("shop");
    app.tweak = |spec| spec.hold_requests = Duration::from_secs(30);
    let supervisor = app.serving(&["v1"]);
    let pids = supervisor.live_pids(&app);
    assert_eq!(pids.len(), 1, "one instance: {pids:?}");

    let load = Load::start(app.listen, 4, "/");
    load.wait_for_more_ok(50, ROLLOUT);
    // The harshest death, of the whole process group: nothing answers until the restart.
    killpg(Pid::from_raw(pids[0] as i32), Signal::SIGKILL).expect("kill the instance");
    wait_until("the instance to be restarted", ROLLOUT, || {
        supervisor
            .live_pids(&app)
            .first()
            .is_some_and(|pid| *pid != pids[0])
    });
    load.wait_for_more_ok(50, ROLLOUT);
    let report = load.stop();
    assert_eq!(
        report.failures(),
        0,
        "requests failed while the only instance was down: {report:?}"
    );
}
