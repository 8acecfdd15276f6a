//! The only place that spawns or signals app processes: each instance in its own process group,
//! output to a log file, graceful stop (signal → grace → SIGKILL to the group), and re-adoption of
//! instances that outlived a supervisor crash (pid *and* start time must match).
//!
//! A supervisor crash must never take its apps down: instances get no pipe to the supervisor (a
//! dead reader would SIGPIPE them), their own process group (a terminal's ^C or a signal to the
//! supervisor's group does not reach them) and no parent-death signal.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

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

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => match Signal::try_from(*signal) {
                Ok(signal) => write!(f, "killed by {signal}"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
            ExitStatus::Unknown => f.write_str("exited (status unknown: not our child)"),
        }
    }
}

/// A running instance: spawned by us or adopted after a restart.
#[derive(Debug)]
pub struct Running {
    pub id: ProcessId,
    watch: Watch,
}

/// How we learn that the process is gone.
#[derive(Debug)]
enum Watch {
    /// Our child: waiting on it also reaps it.
    Child(tokio::process::Child),
    /// Not our child: a pidfd turns readable when the process exits.
    Pidfd(OwnedFd),
    /// Already seen to exit; the status is remembered so `exited` can be awaited again.
    Exited(ExitStatus),
}

impl Running {
    /// Resolves when the process has exited (no polling: a pidfd or the child's wait).
    ///
    /// Cancel-safe, and may be awaited again after it resolved: it then returns the same status.
    pub async fn exited(&mut self) -> ExitStatus {
        let status = match &mut self.watch {
            Watch::Exited(status) => return status.clone(),
            Watch::Child(child) => match child.wait().await {
                Ok(status) => from_std(status),
                // Only possible if someone else reaped our child; it is gone either way.
                Err(_) => ExitStatus::Unknown,
            },
            Watch::Pidfd(fd) => {
                wait_pidfd(fd).await;
                ExitStatus::Unknown
            }
        };
        self.watch = Watch::Exited(status.clone());
        status
    }
}

/// Waits until a pidfd is readable, i.e. its process has exited.
async fn wait_pidfd(fd: &OwnedFd) {
    use std::os::fd::AsFd;
    // The AsyncFd is made here rather than in `adopt`, which may run outside a runtime.
    let borrowed = match fd.as_fd().try_clone_to_owned() {
        Ok(owned) => owned,
        Err(_) => return,
    };
    // SAFETY: `borrowed` is an OwnedFd we just duplicated; the AsyncFd owns it, so it stays open
    // and refers to the same pidfd for the AsyncFd's whole life.
    let registered =
        unsafe { AsyncFd::register_with_interest(borrowed, tokio::io::Interest::READABLE) };
    match registered {
        Ok(async_fd) => {
            // Readable once and for all at exit: one wakeup, no loop needed.
            let _ = async_fd.readable().await;
        }
        // Registration cannot fail for a valid pidfd; if it somehow does, fall back to treating
        // the process as gone rather than blocking a stop for ever.
        Err(err) => tracing::warn!("cannot watch pidfd: {err}"),
    }
}

fn from_std(status: std::process::ExitStatus) -> ExitStatus {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        (None, None) => ExitStatus::Unknown,
    }
}

/// Starts an instance in its own process group; with `socket`, the systemd way: the socket as fd
/// 3, `LISTEN_FDS=1` and `LISTEN_PID` set to the app's pid by the shell that execs it (`$$`; a
/// compound line's app is the shell's child, and gets the shell's pid).
pub fn spawn(spec: &SpawnSpec, socket: Option<&std::net::TcpListener>) -> std::io::Result<Running> {
    // O_APPEND: several instances and restarts may share a log file without clobbering it.
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .map_err(|err| {
            std::io::Error::new(
                err.kind(),
                format!("cannot open log file {}: {err}", spec.log_path.display()),
            )
        })?;
    let log_err = log.try_clone()?;
    let mut command = tokio::process::Command::new("sh");
    let line = match socket {
        Some(_) => format!(
            "LISTEN_PID=$$; export LISTEN_PID; {}",
            shell_line(&spec.command)
        ),
        None => shell_line(&spec.command),
    };
    if socket.is_some() {
        command.env("LISTEN_FDS", "1");
    }
    let socket_fd = socket.map(std::os::fd::AsRawFd::as_raw_fd);
    command
        .arg("-c")
        .arg(line)
        .current_dir(&spec.cwd)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        .kill_on_drop(false);
    // SAFETY: the hook only calls getrlimit, setrlimit, dup2 and fcntl, which are
    // async-signal-safe, and touches no lock or allocation between fork and exec.
    unsafe {
        command.pre_exec(move || {
            super::fds::restore_for_child()?;
            if let Some(fd) = socket_fd {
                hand_over_as_fd_3(fd)?;
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!(
                "cannot start `{}` in {}: {err}",
                spec.command,
                spec.cwd.display()
            ),
        )
    })?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("spawned process has no pid"))?;
    // The child cannot be reaped before we wait on it, so its /proc entry is there to read.
    let start_time = stat(pid)?.start_time;
    Ok(Running {
        id: ProcessId { pid, start_time },
        watch: Watch::Child(child),
    })
}

/// In the child between fork and exec: `fd` becomes fd 3, open across exec.
fn hand_over_as_fd_3(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    const LISTEN_FDS_START: std::os::fd::RawFd = 3;
    // SAFETY: plain syscalls on descriptors of this (forked) process.
    let rc = unsafe {
        if fd == LISTEN_FDS_START {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, LISTEN_FDS_START)
        }
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The line given to `sh -c`: `exec LINE` for a simple command, so the app itself is the process
/// we watch and its exit status is the one reported; a compound line (`a; b`, `a && b`, a pipe)
/// runs as is, since `exec` would cut it after its first command. Either way the stop signal
/// reaches the app: it goes to the whole process group.
fn shell_line(line: &str) -> String {
    let compound = line.contains([';', '&', '|', '\n', '(', '`']) || line.contains("$(");
    if compound {
        line.to_owned()
    } else {
        format!("exec {line}")
    }
}

/// Re-adopts a process from the state file if it still runs with the same start time.
pub fn adopt(id: ProcessId) -> Option<Running> {
    if start_time(id.pid)? != id.start_time {
        return None;
    }
    let fd = pidfd_open(id.pid)?;
    // The pid could have died and been reused between the first check and pidfd_open; the pidfd
    // pins whatever process it refers to, so checking again closes that gap.
    if start_time(id.pid)? != id.start_time {
        return None;
    }
    Some(Running {
        id,
        watch: Watch::Pidfd(fd),
    })
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    let fd = i32::try_from(fd).ok()?;
    // SAFETY: the syscall just returned this fd to us and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the supervisor reads of a process in /proc/PID/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// In clock ticks since boot (field 22).
    pub start_time: u64,
    /// Dead, waiting to be reaped. A child that exits at once is a zombie by the time `spawn`
    /// reads this, and still has its start time.
    pub zombie: bool,
    /// Its process group (field 5): an instance leads its own.
    pub group: u32,
}

/// Reads /proc/PID/stat.
pub fn stat(pid: u32) -> std::io::Result<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&stat).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected format of /proc/{pid}/stat: {stat}"),
        )
    })
}

/// The start time of a live (not zombie) process.
fn start_time(pid: u32) -> Option<u64> {
    match stat(pid) {
        Ok(stat) if !stat.zombie => Some(stat.start_time),
        _ => None,
    }
}

fn parse_stat(stat: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may hold spaces or ')': split after the
    // last ')'. What follows starts with field 3 (state), so field 5 is the 3rd there and field
    // 22 the 20th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let zombie = fields.next()? == "Z";
    let group = fields.nth(1)?.parse().ok()?;
    let start_time = fields.nth(16)?.parse().ok()?;
    Some(Stat {
        start_time,
        zombie,
        group,
    })
}

/// Sends `signal` to the process group, waits up to `grace`, then SIGKILLs the group.
/// Returns when the group leader is gone.
///
/// An unknown signal name falls back to SIGTERM (manifests are validated before they get here).
/// Once the leader is gone, whatever it left in its group is SIGKILLed too, so an instance never
/// leaves helpers behind holding its port.
pub async fn stop(running: &mut Running, signal: &str, grace: Duration) -> ExitStatus {
    let signal = parse_signal(signal).unwrap_or_else(|err| {
        tracing::warn!("{err}; sending SIGTERM instead");
        Signal::SIGTERM
    });
    let group = Pid::from_raw(running.id.pid as i32);
    signal_group(group, signal);
    let status = match tokio::time::timeout(grace, running.exited()).await {
        Ok(status) => status,
        Err(_) => {
            tracing::info!(
                pid = running.id.pid,
                "still running {grace:?} after {signal}, sending SIGKILL to its group"
            );
            signal_group(group, Signal::SIGKILL);
            running.exited().await
        }
    };
    // ESRCH here just means the group is already empty.
    let _ = killpg(group, Signal::SIGKILL);
    status
}

/// Signals the group led by `leader`; if it leads none (a process adopted from elsewhere that
/// never became a group leader), signals the process alone, so a stop can never hang.
fn signal_group(leader: Pid, signal: Signal) {
    if killpg(leader, signal) == Err(nix::errno::Errno::ESRCH) {
        let _ = nix::sys::signal::kill(leader, signal);
    }
}

/// Parses a signal name as written in a manifest (`SIGTERM` or `TERM`).
pub fn parse_signal(name: &str) -> Result<nix::sys::signal::Signal, String> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map_err(|_| format!("unknown signal `{name}`: use a name such as SIGTERM, TERM or SIGINT"))
}

/// A free TCP port on `host`, for a new instance.
///
/// The port is released before the instance binds it, so another process could take it in
/// between: the instance task then sees it held ([`port_taken`]) and moves the instance to a
/// fresh port. Handing the socket itself to the app would need every app to support socket
/// activation.
pub fn free_port(host: std::net::IpAddr) -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((host, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Whether a process holds `addr` (bound or listening) so that an instance could not bind it.
/// Connections of an earlier run waiting in TIME_WAIT do not count: apps bind with
/// SO_REUSEADDR, as this check does.
pub fn port_taken(addr: std::net::SocketAddr) -> bool {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::AddrInUse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_port_is_taken_and_a_closed_one_is_not() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        assert!(port_taken(addr));
        drop(held);
        assert!(!port_taken(addr));
    }

    #[test]
    fn start_time_and_group_are_read_even_with_spaces_in_the_name() {
        let stat =
            "4242 (my app) x) S 1 4243 4244 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let parsed = parse_stat(stat).unwrap();
        assert_eq!(
            (parsed.start_time, parsed.zombie, parsed.group),
            (987654, false, 4243)
        );
    }

    #[test]
    fn zombies_are_told_apart() {
        let stat =
            "4242 (app) Z 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert!(parse_stat(stat).unwrap().zombie);
    }

    #[test]
    fn our_own_start_time_is_readable() {
        assert!(start_time(std::process::id()).is_some());
    }

    #[test]
    fn simple_lines_are_execed_and_compound_ones_kept() {
        assert_eq!(
            shell_line("./bin/app --port 80"),
            "exec ./bin/app --port 80"
        );
        assert_eq!(shell_line("cd x && ./app"), "cd x && ./app");
        assert_eq!(shell_line("a; b"), "a; b");
    }

    #[test]
    fn signals_parse_with_or_without_the_prefix() {
        assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("int"), Ok(Signal::SIGINT));
        assert!(parse_signal("SIGNOPE").unwrap_err().contains("SIGNOPE"));
    }
}
