//! One worker's idle keep-alive connections to one instance: how many are kept, how long, and
//! the check that a connection is still quiet before a request goes out on it.
//!
//! The newest connection is used first, so that a burst's extra connections sit at the bottom
//! and are closed when they have been idle for [`IDLE`] (or for less than the instance says it
//! keeps them, `Keep-Alive: timeout=`), by a sweep that runs only while the pool holds any. A
//! connection is taken only after a real non-blocking peek at its socket finds nothing: bytes
//! that arrived unasked (an instance that wrote past the end of its last answer) or its close
//! mean it is dropped, never read as the next request's answer.
//!
//! An instance that closes idle connections without saying when (many app servers do, after 2
//! to 5 s) races every request sent on a connection as old as that. The pool learns the shortest
//! idleness after which the instance was seen closing one, and from then on uses only younger
//! connections, so the race is run at most until it has been seen once.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use tokio::time::Instant;

use super::upstream::Conn;

/// Idle connections kept per instance and worker; beyond that they are closed after use.
pub(super) const MAX_IDLE: usize = 128;
/// How long an idle connection is kept when the instance does not say how long it keeps it.
/// Under nginx's upstream `keepalive_timeout` (60 s): apps that close idle connections sooner
/// without saying so (2 to 5 s is common) are met by the peek before reuse.
pub(super) const IDLE: Duration = Duration::from_secs(15);

/// The shortest idleness the pool learns: an instance that closes connections for another
/// reason than idleness (after so many requests) would otherwise teach it to keep none.
const LEARNED_FLOOR: Duration = Duration::from_millis(50);

/// The idle connections themselves, oldest first.
#[derive(Debug, Default)]
pub(super) struct Pool {
    idle: VecDeque<Idle>,
    /// A sweep is scheduled (see `BackendState::give_back`).
    pub sweeping: bool,
    /// The shortest idleness after which the instance was seen closing a connection.
    closes_after: Option<Duration>,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
    expires: Instant,
}

/// A connection taken from the pool, and how long it had been idle.
#[derive(Debug)]
pub(super) struct Taken {
    pub conn: Conn,
    pub idle_for: Duration,
}

impl Pool {
    /// The newest connection that is still open and quiet; closes the expired and the unquiet
    /// ones it meets, and learns from those the instance closed.
    pub fn take(&mut self, now: Instant) -> Option<Taken> {
        // The oldest are at the front; the sweep sees to any other expired one.
        let too_old = self.closes_after.map(|after| after - after / 4);
        while self.idle.front().is_some_and(|idle| {
            idle.expires <= now || too_old.is_some_and(|old| now - idle.since >= old)
        }) {
            self.idle.pop_front();
        }
        while let Some(Idle { conn, since, .. }) = self.idle.pop_back() {
            let idle_for = now - since;
            match peek(&conn) {
                Peek::Quiet => return Some(Taken { conn, idle_for }),
                Peek::Closed => self.closed_after(idle_for),
                Peek::Unasked => tracing::debug!(
                    "dropped a pooled instance connection with bytes nobody asked for"
                ),
            }
        }
        None
    }

    /// Notes that the instance closed a connection idle for `idle_for`.
    pub fn closed_after(&mut self, idle_for: Duration) {
        let idle_for = idle_for.max(LEARNED_FLOOR);
        if self.closes_after.is_none_or(|known| idle_for < known) {
            tracing::debug!(
                "the instance closes connections idle for {idle_for:?}: younger ones only from now on"
            );
            self.closes_after = Some(idle_for);
        }
    }

    /// Keeps `conn` for the next request, unless the pool is full; true if it was kept.
    pub fn put(&mut self, conn: Conn, now: Instant) -> bool {
        if self.idle.len() >= MAX_IDLE {
            return false;
        }
        let keep = conn.idle_hint.map_or(IDLE, |hint| IDLE.min(within(hint)));
        if keep.is_zero() {
            return false;
        }
        self.idle.push_back(Idle {
            conn,
            since: now,
            expires: now + keep,
        });
        true
    }

    /// Closes the connections idle past their time; returns when the next one expires.
    pub fn expire(&mut self, now: Instant) -> Option<Instant> {
        self.idle.retain(|idle| idle.expires > now);
        self.idle.iter().map(|idle| idle.expires).min()
    }

    pub fn clear(&mut self) {
        self.idle.clear();
    }

    pub fn len(&self) -> usize {
        self.idle.len()
    }
}

/// How long to keep a connection the instance keeps for `hint`: a margin before its own close,
/// so that a request never goes out on a connection the instance is closing.
fn within(hint: Duration) -> Duration {
    hint.saturating_sub((hint / 2).min(Duration::from_secs(1)))
}

/// What has arrived on an idle connection.
enum Peek {
    Quiet,
    Closed,
    Unasked,
}

/// Whether anything has arrived on an idle connection, even its close: a `recv` with
/// `MSG_PEEK`, not tokio's readiness, which only changes when the event loop next polls and so
/// can say "nothing" about bytes (or a FIN) already in the socket.
fn peek(conn: &Conn) -> Peek {
    if !conn.buf.is_empty() {
        return Peek::Unasked;
    }
    let mut byte = [0u8; 1];
    loop {
        return match recv(
            conn.io.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Err(Errno::EAGAIN) => Peek::Quiet,
            Err(Errno::EINTR) => continue,
            Ok(0) | Err(_) => Peek::Closed,
            Ok(_) => Peek::Unasked,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_kept_short_of_the_instance_s_own_timeout() {
        assert_eq!(within(Duration::from_secs(5)), Duration::from_secs(4));
        assert_eq!(within(Duration::from_secs(1)), Duration::from_millis(500));
        assert_eq!(within(Duration::ZERO), Duration::ZERO);
        assert_eq!(within(Duration::from_secs(60)), Duration::from_secs(59));
    }
}
