//! The test harness: the real `cutover` binary, temp dirs, free ports and deadline-bound waits.
//! Its children hold a real supervisor (`supervisor`, asked through `control_socket`) and the
//! apps it runs (`app`), the one way to send an HTTP request (`request`), processes seen through
//! /proc (`procs`), signing keys made by the real minisign (`minisign`), a headless chromium
//! (`browser`), and the servers and tools tests stand up.

#![allow(dead_code)]

pub mod acme;
pub mod app;
pub mod archive;
pub mod browser;
pub mod ca_front;
pub mod control_socket;
pub mod fleet;
pub mod github;
pub mod grpc;
pub mod http_server;
pub mod load;
pub mod metrics;
pub mod minisign;
pub mod pebble;
pub mod ports;
pub mod procs;
pub mod request;
pub mod s3;
pub mod serf;
pub mod supervisor;
pub mod tls;
pub mod tmpfs;

pub use ports::free_port;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Path of the `cutover` binary cargo built for these tests.
pub fn cutover_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cutover"))
}

/// A `Command` for the real binary, with an environment free of the caller's cutover settings.
pub fn cutover() -> Command {
    let mut cmd = Command::new(cutover_bin());
    for var in [
        "CONSUL_INDEX",
        "CUTOVER_STATE_DIR",
        "CUTOVER_SOCKET",
        "CUTOVER_MAX_SRC_SIZE",
        "CUTOVER_MAX_UNPACKED_SIZE",
        "CUTOVER_MAX_ENTRIES",
        "CUTOVER_MIN_FREE_SPACE",
        "CUTOVER_MIN_FREE_INODES",
        "CUTOVER_TRUST",
        "CUTOVER_GITHUB_TOKEN",
        "CUTOVER_GITHUB_ASSETS",
        "SERF_EVENT",
        "SERF_USER_EVENT",
        "SERF_USER_LTIME",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Polls `condition` until it holds or `deadline` passes; panics naming `what` on timeout.
pub fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if condition() {
            return;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Fixtures shipped in the repository.
pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(path)
}

/// Every line of `text` (a log written with `--log-format json`, or an access log) as a JSON
/// object; panics naming the first line that is not one. The harness's own marker lines
/// (`---- test harness: …`) are skipped.
pub fn json_lines(text: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    text.lines()
        .filter(|line| !line.starts_with("---- test harness"))
        .map(|line| match serde_json::from_str(line) {
            Ok(serde_json::Value::Object(object)) => object,
            _ => panic!("a log line that is not a JSON object: {line:?}\nin:\n{text}"),
        })
        .collect()
}
