//! Free TCP ports for test servers, taken from below the kernel's ephemeral range.
//!
//! A port found with `bind(0)` and released is only free "a moment ago": the kernel hands the
//! same range to every other `bind(0)` (the supervisors' instances, other tests' servers) and to
//! outgoing connections (load generators, the proxy's pool), so under a parallel test run one of
//! them can take it before the test's server binds it. Ports below the ephemeral range are never
//! handed out by the kernel; within this process they are given in turn, each at most once per
//! lap, so a test's port is taken only if something outside the test run holds it, and then
//! the bind check skips it.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const FIRST: u32 = 10_000;

/// A TCP port on 127.0.0.1 that is free now and that no other part of the test run will be
/// handed while the test uses it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let end = ephemeral_low().max(FIRST + 1_000);
    let span = end - FIRST;
    // Start at a different place in each test binary, so two of them run at once rarely meet.
    let offset = std::process::id() % span;
    for _ in 0..span {
        let port = FIRST + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port).expect("ports fit in u16");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {FIRST} and {end}");
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// The inode of the socket listening on `addr` (IPv4), from /proc/net/tcp: the same inode before
/// and after a restart means the same socket, not merely the same port.
pub fn listening_socket(addr: std::net::SocketAddr) -> Option<u64> {
    let std::net::SocketAddr::V4(v4) = addr else {
        return None;
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl, local_address, rem_address, st (0A: LISTEN), …, inode (the tenth).
        (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
            .then(|| fields.get(9)?.parse().ok())
            .flatten()
    })
}
