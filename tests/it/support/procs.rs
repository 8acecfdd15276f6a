//! Processes seen from outside, through /proc: whether one is alive, the children of one, what
//! one holds (resident memory, open files, threads), the processes that mention a path (what a
//! test fleet left running), and `Reaper`, which kills whatever still runs under an app's home
//! when a test ends.
//!
//! Self-contained (std and nix only), so that the benchmarks include it too (`tests/bench/common.rs`).

use std::path::{Path, PathBuf};

/// Whether `pid` is a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| !s.trim_start().starts_with('Z'))
    })
}

/// Pid and command name of each child of `parent`.
pub fn children(parent: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some((pid, comm))
        })
        .collect()
}

/// Resident memory of `pid` in KiB (`VmRSS` in /proc/PID/status); 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

/// Threads of `pid` (`Threads:` in /proc/PID/status); 0 once it is gone.
pub fn threads(pid: u32) -> u64 {
    status_field(pid, "Threads:")
}

/// The first number of the line of /proc/PID/status that starts with `field`.
fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with(field))?;
            line[field.len()..].split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Open file descriptors of `pid` (entries of /proc/PID/fd); 0 once it is gone.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |fds| fds.count())
}

/// Live processes (pid and command name) whose command line, working directory or environment
/// mentions `path`: everything a test fleet rooted there started, down to the app instances
/// (their working directory) and the Serf agents (their environment names the node's state
/// dir), and nothing else on the machine. This process itself is left out.
pub fn mentioning(path: &Path) -> Vec<(u32, String)> {
    let needle = path.as_os_str().as_encoded_bytes();
    let holds = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_string_lossy().parse().ok()?;
            if pid == me || !alive(pid) {
                return None;
            }
            let dir = entry.path();
            let cwd = std::fs::read_link(dir.join("cwd")).unwrap_or_default();
            let found = cwd.starts_with(path)
                || std::fs::read(dir.join("cmdline")).is_ok_and(|c| holds(&c))
                || std::fs::read(dir.join("environ")).is_ok_and(|e| holds(&e));
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            found.then(|| (pid, comm.trim_end().to_owned()))
        })
        .collect()
}

/// The TCP ports process `pid` listens on (IPv4 and IPv6), from its descriptors and
/// `/proc/net/tcp*`.
pub fn listening_tcp_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1 (ADDR:PORT in hex), st field 3 (0A: LISTEN), inode 9.
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state != "0A" || !inodes.iter().any(|i| i == inode) {
                continue;
            }
            if let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}

/// SIGKILLs process `pid` (errors ignored: it may be gone already).
pub fn kill_9(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kills every process working under one of the given app homes (`dest`: their instances run
/// from `dest/releases/<version>`) on drop, so a test that fails half-way, or a supervisor killed
/// before it recorded a candidate, leaves nothing running.
pub struct Reaper(pub Vec<PathBuf>);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else {
                continue;
            };
            if self.0.iter().any(|dest| cwd.starts_with(dest)) {
                kill_9(pid);
            }
        }
    }
}
