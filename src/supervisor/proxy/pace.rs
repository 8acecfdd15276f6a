//! How long the proxy waits on a client in the middle of a request: for the next bytes of its
//! request body (`app.body_timeout`), or for it to take the next bytes of a response
//! (`app.send_timeout`), nginx's `client_body_timeout` and `send_timeout`.
//!
//! A timeout between two reads (or writes) alone lets a client that moves one byte every 59 s
//! hold a connection, and the instance worker behind it, for ever. So one rule for both
//! directions, Apache mod_reqtimeout's `MinRate` on top of nginx's gap: a single wait may last
//! at most the timeout, and all the waits on one body (one connection's responses) together at
//! most the timeout plus one second per `min_rate` bytes moved. Holding an instance for an hour
//! then costs a client an hour's worth of `min_rate`; a fast upload or download earns plenty.
//!
//! Only the time the proxy waits on the *client* counts: not the time an instance takes to read
//! a body or to produce a stream, which is not the client's fault.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The rule for one direction: the longest single wait, and the rate a client must keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pace {
    pub timeout: Duration,
    /// Bytes per second; 0: no minimum (only the gap counts).
    pub min_rate: u64,
}

impl Pace {
    /// How long the wait under way may last, when the waits before it took `waited` and
    /// `moved` bytes went through: zero means at once.
    pub fn allowance(&self, waited: Duration, moved: u64) -> Duration {
        if self.min_rate == 0 {
            return self.timeout;
        }
        let rate = u128::from(self.min_rate);
        let earned_ns = u128::from(moved) * 1_000_000_000 / rate;
        let earned = Duration::from_nanos(u64::try_from(earned_ns).unwrap_or(u64::MAX));
        let total = self.timeout.saturating_add(earned);
        self.timeout.min(total.saturating_sub(waited))
    }

    /// What to say of a client cut after a wait of `current` (beyond `waited` before it).
    fn why(&self, what: &str, current: Duration) -> String {
        if current >= self.timeout {
            format!("{what} for {:?}", self.timeout)
        } else {
            format!("{what} more slowly than {} bytes/s", self.min_rate)
        }
    }
}

/// The clock of one request body on its way to an instance: the time spent waiting for the
/// client's bytes, not counting the time the instance takes to read them.
#[derive(Debug)]
pub(super) struct BodyClock {
    pace: Pace,
    /// The waits that ended.
    waited: Duration,
    /// When the wait under way began.
    since: Instant,
    received: u64,
}

impl BodyClock {
    pub fn start(pace: Pace) -> BodyClock {
        BodyClock {
            pace,
            waited: Duration::ZERO,
            since: Instant::now(),
            received: 0,
        }
    }

    /// When the wait under way runs out.
    pub fn deadline(&self) -> Instant {
        self.since + self.pace.allowance(self.waited, self.received)
    }

    /// `n` bytes came: the wait under way ends.
    pub fn received(&mut self, n: usize) {
        self.waited += self.since.elapsed();
        self.received += n as u64;
    }

    /// They went on to the instance: the proxy waits on the client again.
    pub fn waiting(&mut self) {
        self.since = Instant::now();
    }

    /// The error a body cut at its deadline fails with.
    pub fn timed_out(&self) -> io::Error {
        let why = self
            .pace
            .why("the request body stopped arriving", self.since.elapsed());
        io::Error::new(io::ErrorKind::TimedOut, why)
    }
}

/// How one client connection takes its responses: written by the connection's own task as it
/// writes (see `workers::Watched`), read by its timer (`serve`). Writes that went out cost
/// two relaxed atomics; the clock is read only when the client's socket is full.
#[derive(Debug)]
pub(super) struct SendState {
    born: Instant,
    /// Milliseconds since `born`, plus one, of the first write that found the socket full with
    /// none gone out since; 0 while writes go out.
    blocked: AtomicU64,
    /// Milliseconds spent blocked before, in all.
    waited_ms: AtomicU64,
    sent: AtomicU64,
}

impl SendState {
    pub fn new(born: Instant) -> SendState {
        SendState {
            born,
            blocked: AtomicU64::new(0),
            waited_ms: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// `n` bytes went out to the client. Only the connection's task writes these (hence load and
    /// store rather than a locked add).
    pub fn wrote(&self, n: usize) {
        let sent = self.sent.load(Ordering::Relaxed);
        self.sent.store(sent + n as u64, Ordering::Relaxed);
        let blocked = self.blocked.load(Ordering::Relaxed);
        if blocked != 0 {
            let waited = self.waited_ms.load(Ordering::Relaxed);
            let now = self.ms();
            self.waited_ms
                .store(waited + now.saturating_sub(blocked - 1), Ordering::Relaxed);
            self.blocked.store(0, Ordering::Relaxed);
        }
    }

    /// A write found the client's socket full.
    pub fn full(&self) {
        if self.blocked.load(Ordering::Relaxed) == 0 {
            self.blocked.store(self.ms() + 1, Ordering::Relaxed);
        }
    }

    /// When the blocked write runs out under `pace`; `None` while writes go out.
    pub fn deadline(&self, pace: &Pace) -> Option<Instant> {
        let blocked = self.blocked.load(Ordering::Relaxed);
        if blocked == 0 {
            return None;
        }
        let waited = Duration::from_millis(self.waited_ms.load(Ordering::Relaxed));
        let since = self.born + Duration::from_millis(blocked - 1);
        Some(since + pace.allowance(waited, self.sent.load(Ordering::Relaxed)))
    }

    /// Why a connection is cut whose blocked write ran out.
    pub fn why(&self, pace: &Pace) -> String {
        let blocked = self.blocked.load(Ordering::Relaxed);
        let current = Duration::from_millis(self.ms().saturating_sub(blocked.saturating_sub(1)));
        pace.why("the client took no response bytes", current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACE: Pace = Pace {
        timeout: Duration::from_secs(60),
        min_rate: 500,
    };

    #[test]
    fn one_wait_never_lasts_longer_than_the_timeout() {
        assert_eq!(PACE.allowance(Duration::ZERO, 0), PACE.timeout);
        // However much it moved: the gap alone is nginx's rule.
        assert_eq!(PACE.allowance(Duration::ZERO, 1 << 30), PACE.timeout);
    }

    #[test]
    fn a_trickle_runs_out_of_time_it_has_not_earned() {
        // One byte each 59 s: after two, 118 s waited against 60 s + 4 ms earned.
        let waited = Duration::from_secs(118);
        assert_eq!(PACE.allowance(waited, 2), Duration::ZERO);
        // 30 kB moved in those 118 s (254 bytes/s) earned 60 s: 2 s left of the next wait.
        assert_eq!(
            PACE.allowance(waited, 30_000),
            Duration::from_secs(2),
            "60 + 60 - 118"
        );
        let no_rate = Pace {
            min_rate: 0,
            ..PACE
        };
        assert_eq!(no_rate.allowance(waited, 0), PACE.timeout);
    }

    #[test]
    fn sends_count_only_the_time_the_socket_is_full() {
        let state = SendState::new(Instant::now());
        assert_eq!(state.deadline(&PACE), None, "nothing blocked");
        state.wrote(1000);
        state.full();
        let deadline = state.deadline(&PACE).expect("blocked");
        let left = deadline - Instant::now();
        assert!(
            left > Duration::from_secs(59) && left <= PACE.timeout,
            "{left:?}"
        );
        state.full();
        assert_eq!(
            state.deadline(&PACE),
            Some(deadline),
            "the first write counts"
        );
        state.wrote(10);
        assert_eq!(state.deadline(&PACE), None);
    }
}
