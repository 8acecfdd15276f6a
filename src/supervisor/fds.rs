//! File descriptors, the resource a flood of idle connections exhausts first: `cutover supervise`
//! raises its soft `RLIMIT_NOFILE` to the hard limit at start ([`raise_soft_limit`]), hands its
//! app instances the soft limit it started with ([`restore_for_child`]), and splits the limit
//! into a budget of client connections that all its proxies share ([`connection_budget`]) and a
//! reserve that the proxies never touch: the control socket, health checks, state and log files,
//! spawning instances.
//!
//! systemd starts services with a soft limit of 1024 (and a hard one of 524288), because a soft
//! limit above 1024 breaks programs that still use `select()`; its advice is for programs that
//! need more to raise their own soft limit, and to give their children the old one back, which
//! is what this does.

use std::io;
use std::sync::OnceLock;

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// Descriptors kept for everything but client connections, at the least (what a supervisor with
/// a few apps uses: its runtimes' event loops, listening sockets, pidfds, state and log files,
/// control connections, a health check per instance), and on top a share of the limit.
const RESERVE_MIN: u64 = 128;
const RESERVE_SHARE: u64 = 8;

/// Each client connection can hold a connection to an instance as well.
pub const FDS_PER_CONNECTION: u64 = 2;

/// The soft limit before [`raise_soft_limit`] raised it, for the instances.
static STARTED_WITH: OnceLock<u64> = OnceLock::new();

/// What [`raise_soft_limit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now (the hard limit, or the kernel's `nr_open` when that is unlimited).
    pub now: u64,
}

/// Raises the soft limit on open files to the hard limit. Call it once, at start, before any
/// proxy is made: the connection budget is derived from the limit on first use.
pub fn raise_soft_limit() -> io::Result<Raised> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // An unlimited hard limit still cannot be set as the soft one: the kernel caps it at nr_open.
    let target = if hard == RLIM_INFINITY {
        nr_open().unwrap_or(soft).max(soft)
    } else {
        hard
    };
    let _ = STARTED_WITH.set(soft);
    if target > soft {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    Ok(Raised {
        before: soft,
        now: target.max(soft),
    })
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// In a child about to `exec` an instance: puts back the soft limit the supervisor started with,
/// so an app sees the limit it would have had without cutover (a raised one can break its
/// `select()`). Only async-signal-safe calls: it runs between `fork` and `exec`.
pub fn restore_for_child() -> io::Result<()> {
    let Some(&soft) = STARTED_WITH.get() else {
        return Ok(());
    };
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)?;
    Ok(())
}

/// The soft limit the process started with, if [`raise_soft_limit`] raised it.
pub fn started_with() -> Option<u64> {
    STARTED_WITH.get().copied()
}

/// The soft limit on open files now (1024 if it cannot be read).
pub fn soft_limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// How many client connections all the proxies of a process with a soft limit of `limit` open
/// files may hold together: what is left after the reserve, two descriptors each.
pub fn connection_budget(limit: u64) -> usize {
    let reserve = (RESERVE_MIN + limit / RESERVE_SHARE).min(limit / 2);
    let budget = limit.saturating_sub(reserve) / FDS_PER_CONNECTION;
    usize::try_from(budget).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_a_reserve_and_counts_two_descriptors_a_connection() {
        // systemd's default soft limit, were it not raised: 1024 - (128 + 128) left, halved.
        assert_eq!(connection_budget(1024), 384);
        // A small limit keeps half for the reserve.
        assert_eq!(connection_budget(256), 64);
        // systemd's default hard limit, which the supervisor raises its soft limit to.
        assert_eq!(connection_budget(524_288), 229_312);
        assert_eq!(connection_budget(0), 1, "never none at all");
    }
}
