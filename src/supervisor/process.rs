//! The only place that spawns or signals app processes: each instance in its own process group,
//! output to a log file, graceful stop (signal → grace → SIGKILL to the group), and re-adoption of
//! instances that outlived a supervisor crash (pid *and* start time must match).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A process identity that survives pid reuse: the pid and its start time (from /proc/PID/stat,
/// in clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}

/// What to run for one instance.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// Shell line, `{port}` already substituted; run as `sh -c "exec LINE"`.
    pub command: String,
    /// Working directory (the release directory).
    pub cwd: PathBuf,
    /// Extra environment (the app's `env`, plus `PORT`).
    pub env: BTreeMap<String, String>,
    /// stdout and stderr are appended here (never a pipe to the supervisor).
    pub log_path: PathBuf,
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
    /// An adopted process whose status we cannot know (it is not our child).
    Unknown,
}

/// A running instance: spawned by us or adopted after a restart.
#[derive(Debug)]
pub struct Running {
    pub id: ProcessId,
}

impl Running {
    /// Resolves when the process has exited (no polling: a pidfd or the child's wait).
    pub async fn exited(&mut self) -> ExitStatus {
        todo!("Running::exited")
    }
}

/// Starts an instance in its own process group.
pub fn spawn(spec: &SpawnSpec) -> std::io::Result<Running> {
    let _ = spec;
    todo!("process::spawn")
}

/// Re-adopts a process from the state file if it still runs with the same start time.
pub fn adopt(id: ProcessId) -> Option<Running> {
    let _ = id;
    todo!("process::adopt")
}

/// Sends `signal` to the process group, waits up to `grace`, then SIGKILLs the group.
/// Returns when the group leader is gone.
pub async fn stop(running: &mut Running, signal: &str, grace: Duration) -> ExitStatus {
    let _ = (running, signal, grace);
    todo!("process::stop")
}

/// Parses a signal name as written in a manifest (`SIGTERM` or `TERM`).
pub fn parse_signal(name: &str) -> Result<nix::sys::signal::Signal, String> {
    let _ = name;
    todo!("process::parse_signal")
}

/// A free TCP port on `host`, for a new instance.
pub fn free_port(host: std::net::IpAddr) -> std::io::Result<u16> {
    let _ = host;
    todo!("process::free_port")
}
