//! Instances as real processes: spawn, process groups, graceful stop, adoption, health checks.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cutover::supervisor::process::{self, ExitStatus, ProcessId, SpawnSpec};

use crate::support::procs::alive;
use crate::support::wait_until;

mod health;

/// A spec that runs `line` in `dir`, logging to `dir/app.log`.
fn spec(dir: &Path, line: &str) -> SpawnSpec {
    SpawnSpec {
        command: line.to_owned(),
        cwd: dir.to_owned(),
        env: BTreeMap::from([("GREETING".to_owned(), "hi there".to_owned())]),
        log_path: dir.join("app.log"),
    }
}

/// Waits until `pidfile` holds a pid, and returns it.
fn wait_pid_file(pidfile: &Path) -> u32 {
    let read = || std::fs::read_to_string(pidfile).ok()?.trim().parse().ok();
    wait_until("the pid file", Duration::from_secs(10), || read().is_some());
    read().expect("a pid")
}

fn pgid_of(pid: u32) -> i32 {
    nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32)))
        .expect("getpgid")
        .as_raw()
}

#[tokio::test]
async fn spawn_appends_output_to_the_log_in_its_own_group() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.log"), "earlier line\n").unwrap();
    let line = "echo \"$GREETING from $(pwd)\"; echo oops >&2; sleep 30";
    let mut running = process::spawn(&spec(dir.path(), line), None).expect("spawn");
    assert_eq!(
        pgid_of(running.id.pid),
        running.id.pid as i32,
        "leads its own group"
    );
    assert_ne!(pgid_of(running.id.pid), nix::unistd::getpgrp().as_raw());
    let log = dir.path().join("app.log");
    wait_until("both lines in the log", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("oops")
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("earlier line\n"),
        "appended, not truncated: {text}"
    );
    assert!(
        text.contains(&format!("hi there from {}", dir.path().display())),
        "{text}"
    );
    let status = process::stop(&mut running, "TERM", Duration::from_secs(10)).await;
    assert_eq!(status, ExitStatus::Signal(libc::SIGTERM));
}

#[tokio::test]
async fn exit_code_is_reported_and_exited_can_be_awaited_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = process::spawn(&spec(dir.path(), "sh -c 'exit 7'"), None).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), running.exited())
        .await
        .expect("exit within 10s");
    assert_eq!(status, ExitStatus::Code(7));
    assert_eq!(running.exited().await, ExitStatus::Code(7));
}

#[tokio::test]
async fn stop_kills_a_group_that_ignores_the_signal_grandchildren_included() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    // The shell ignores TERM, and so does the child it starts (ignored signals are inherited).
    let line = format!(
        "trap '' TERM; sleep 100 & echo $! > {}; wait",
        pidfile.display()
    );
    let mut running = process::spawn(&spec(dir.path(), &line), None).unwrap();
    let grandchild = wait_pid_file(&pidfile);
    assert_eq!(pgid_of(grandchild), running.id.pid as i32);

    let started = std::time::Instant::now();
    let status = process::stop(&mut running, "SIGTERM", Duration::from_millis(500)).await;
    assert_eq!(
        status,
        ExitStatus::Signal(libc::SIGKILL),
        "TERM is ignored, so KILL"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "grace was honoured"
    );
    wait_until("grandchild gone", Duration::from_secs(10), || {
        !alive(grandchild)
    });
}

#[tokio::test]
async fn adopt_needs_the_same_pid_and_start_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = process::spawn(&spec(dir.path(), "sleep 30"), None).unwrap();
    let id = running.id;
    assert!(process::adopt(id).is_some());
    let wrong = ProcessId {
        pid: id.pid,
        start_time: id.start_time + 1,
    };
    assert!(
        process::adopt(wrong).is_none(),
        "a reused pid must not be adopted"
    );
    process::stop(&mut running, "TERM", Duration::from_secs(10)).await;
    assert!(
        process::adopt(id).is_none(),
        "a dead process must not be adopted"
    );
}

/// Starts `sleep 60` as the leader of its own session, not as our child (as an instance is after
/// a supervisor restart), and returns its identity.
fn start_detached(dir: &Path) -> ProcessId {
    let pidfile = dir.join("pid");
    let status = std::process::Command::new("setsid")
        .args(["-f", "sh", "-c"])
        .arg(format!("echo $$ > {}; exec sleep 60", pidfile.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pid = wait_pid_file(&pidfile);
    // Wait for the exec, so the start time read is that of the process we will adopt.
    wait_until("sleep to run", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    ProcessId {
        pid,
        start_time: fields[19].parse().unwrap(),
    }
}

#[tokio::test]
async fn exited_resolves_for_an_adopted_process() {
    let dir = tempfile::tempdir().unwrap();
    let id = start_detached(dir.path());
    let mut adopted = process::adopt(id).expect("adopt");
    let mut waiter = tokio::spawn(async move { adopted.exited().await });
    let early = tokio::time::timeout(Duration::from_millis(200), &mut waiter).await;
    assert!(
        early.is_err(),
        "exited() resolved while the process still runs"
    );
    let pid = nix::unistd::Pid::from_raw(id.pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("exited() resolves after the kill")
        .unwrap();
    assert_eq!(status, ExitStatus::Unknown);
}

#[tokio::test]
async fn stop_works_on_an_adopted_process() {
    let dir = tempfile::tempdir().unwrap();
    let id = start_detached(dir.path());
    let mut adopted = process::adopt(id).expect("adopt");
    let stopped = tokio::time::timeout(
        Duration::from_secs(20),
        process::stop(&mut adopted, "SIGTERM", Duration::from_secs(5)),
    )
    .await
    .expect("stop returns");
    assert_eq!(
        stopped,
        ExitStatus::Unknown,
        "not our child: no status to know"
    );
    wait_until("the adopted process gone", Duration::from_secs(10), || {
        !alive(id.pid)
    });
}

#[test]
fn free_port_can_be_bound() {
    let host = "127.0.0.1".parse().unwrap();
    let port = process::free_port(host).unwrap();
    assert_ne!(port, 0);
    std::net::TcpListener::bind((host, port)).expect("the port is free");
}
