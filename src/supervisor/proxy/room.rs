//! The client connections one process can hold, all its proxies together: the budget that
//! `supervisor::fds` derives from the limit on open files, so that a flood of connections to
//! the apps never takes the descriptors the control socket, the health checks and the instances
//! need. A process has one limit on open files, hence one budget for all its proxies.
//!
//! Each proxy also has a limit of its own (`app.max_connections`); `Downstream::wait_for_room`
//! applies both in its accept loops.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::sync::Notify;

use crate::supervisor::fds;

/// Client connections open in the process, against what it may hold.
#[derive(Debug)]
pub(super) struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// Accept loops waiting for a connection to end: only then does an end wake anyone.
    waiting: AtomicUsize,
    freed: Notify,
}

/// The process's budget, from its soft limit on open files when first asked for (after
/// `cutover supervise` raised it).
pub(super) fn budget() -> &'static Budget {
    static BUDGET: OnceLock<Budget> = OnceLock::new();
    BUDGET.get_or_init(|| Budget::new(fds::connection_budget(fds::soft_limit())))
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            used: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether every connection of the budget is in use. Accept loops check before they accept
    /// and count after, so two may pass at once: the budget can be overdrawn by the number of
    /// accept loops, which the reserve of descriptors covers.
    pub fn full(&self) -> bool {
        self.used.load(Ordering::Relaxed) >= self.limit
    }

    /// An eighth below the limit: the pressure is off.
    pub fn relieved(&self) -> bool {
        self.used.load(Ordering::Relaxed) < self.limit - self.limit / 8
    }

    pub fn take(&self) {
        self.used.fetch_add(1, Ordering::SeqCst);
    }

    pub fn give_back(&self) {
        self.used.fetch_sub(1, Ordering::SeqCst);
        // SeqCst both here and in `freed`: either the waiter sees the count go down, or this
        // sees the waiter.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Resolves when a connection of any proxy ends, or at once if the budget is not full.
    pub async fn freed(&self) {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        let freed = self.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        if !self.full() {
            return;
        }
        freed.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_budget_wakes_its_waiter_when_a_connection_ends() {
        let budget = Budget::new(2);
        budget.take();
        assert!(!budget.full());
        budget.take();
        assert!(budget.full());
        let waiting = budget.freed();
        tokio::pin!(waiting);
        let early = tokio::time::timeout(Duration::from_millis(20), waiting.as_mut()).await;
        assert!(early.is_err(), "no connection ended yet");
        budget.give_back();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the end");
        assert!(!budget.full());
    }
}
