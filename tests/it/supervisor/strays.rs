//! Instances the state file lost track of (started in the instant before a `kill -9` of the
//! supervisor, before their pid was written): a restarted supervisor finds them by the marks in
//! their environment, stops the ones that are not live and adopts the ones that are.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::support::app::App;
use crate::support::procs::alive;
use crate::support::supervisor::{Supervisor, ROLLOUT};
use crate::support::wait_until;

/// A stand-in process, killed and reaped on drop.
struct Stand(Child);

impl Stand {
    /// `sleep` in `cwd` with `marks` in its environment, leading its own process group or not.
    fn start(cwd: &Path, marks: &[(&str, &str)], own_group: bool) -> Stand {
        let mut command = Command::new("sleep");
        command
            .arg("600")
            .current_dir(cwd)
            .envs(marks.iter().copied())
            .stdin(Stdio::null());
        if own_group {
            command.process_group(0);
        }
        Stand(command.spawn().expect("start sleep"))
    }

    fn running(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The environment of `pid`, as `KEY=VALUE` strings.
fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .expect("read environ")
        .split(|&b| b == 0)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect()
}

#[test]
fn a_process_marked_with_an_instance_that_is_not_live_is_stopped_at_start() {
    let app = App::new("shop");
    let mut supervisor = app.serving(&["v1"]);
    let status = supervisor.status(&app);
    let live = &status.instances[0];
    let live_pid = live.pid.expect("a live pid");
    let state_dir = std::fs::canonicalize(&supervisor.state_dir).unwrap();
    let state_dir = state_dir.to_str().unwrap();
    let env = environ(live_pid);
    for mark in [
        format!("CUTOVER_SUPERVISOR={state_dir}"),
        format!("CUTOVER_INSTANCE={}", live.id),
        "CUTOVER_APP=shop".to_owned(),
    ] {
        assert!(env.contains(&mark), "{mark} not in {env:?}");
    }

    supervisor.kill_9();
    let marks = |supervisor: &str, instance: &str| {
        [
            ("CUTOVER_SUPERVISOR", supervisor.to_owned()),
            ("CUTOVER_INSTANCE", instance.to_owned()),
            ("CUTOVER_APP", "shop".to_owned()),
        ]
    };
    let start = |marks: [(&str, String); 3], own_group: bool| {
        let marks: Vec<(&str, &str)> = marks.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Stand::start(app.home(), &marks, own_group)
    };
    // A candidate whose pid never reached the state file.
    let mut lost = start(marks(state_dir, "shop-v2-7"), true);
    // A helper the live instance started in a group of its own: it goes with the instance.
    let mut helper = start(marks(state_dir, &live.id), true);
    // Another supervisor's instance.
    let mut other = start(marks("/var/lib/elsewhere", "shop-v2-7"), true);
    // Not a group leader: a child of something else, not an instance.
    let mut child = start(marks(state_dir, "shop-v2-7"), false);

    let supervisor = Supervisor::start_in(app.home());
    // Its exit is seen here first (the test is its parent); the supervisor logs once it saw it.
    wait_until("the lost candidate to be stopped", ROLLOUT, || {
        !lost.running() && supervisor.log().contains("not in its state file")
    });
    app.wait_serving("v1");
    assert_eq!(supervisor.live_pids(&app), vec![live_pid], "v1 re-adopted");
    assert!(helper.running(), "the live instance's helper was stopped");
    assert!(other.running(), "another supervisor's instance was stopped");
    assert!(child.running(), "a process that leads no group was stopped");
    let log = supervisor.log();
    assert!(
        log.contains("stopped shop-v2-7") && log.contains("not in its state file"),
        "{log}"
    );
}

#[test]
fn a_live_instance_whose_pid_was_not_recorded_is_adopted_by_its_marks() {
    let app = App::new("shop");
    let mut supervisor = app.serving(&["v1"]);
    let live_pid = supervisor.live_pids(&app)[0];
    supervisor.kill_9();
    assert!(alive(live_pid), "the instance outlives the supervisor");

    // As if the supervisor had restarted the instance and died before recording the new pid.
    let path = supervisor.state_dir.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let recorded = &mut state["apps"]["shop"]["instances"][0]["process"];
    assert_eq!(recorded["pid"], live_pid, "the state file records the pid");
    *recorded = serde_json::Value::Null;
    std::fs::write(&path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();

    let supervisor = Supervisor::start_in(app.home());
    app.wait_serving("v1");
    let status = supervisor.status(&app);
    assert_eq!(supervisor.live_pids(&app), vec![live_pid], "{status:?}");
    assert_eq!(status.instances[0].restarts, 0, "{status:?}");
    let log = supervisor.log();
    assert!(
        log.contains("which the state file had not recorded"),
        "{log}"
    );
}
