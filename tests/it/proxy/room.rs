//! `app.max_connections`: at the limit the proxy closes the oldest idle connection to make room
//! for a new one, never one with a request in progress; with none idle, a new connection waits
//! in the listen backlog until a connection frees its place, and is answered then.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover::supervisor::proxy::{ClientLimits, Proxy};
use tokio::net::TcpStream;

use super::setup::{get, route_to};
use crate::support::load::DemoApp;
use crate::support::wait_until;

/// One event loop, so that the limit is exact: loops that accept side by side may each take
/// one connection past it.
fn proxy_of(app: &DemoApp, max_connections: usize) -> Arc<Proxy> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = Proxy::with_workers(listener, 1, false).unwrap();
    proxy.set_client_limits(ClientLimits {
        max_connections,
        ..ClientLimits::default()
    });
    proxy.set_route(route_to(app));
    Arc::new(proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_idle_connections_make_room_for_new_clients() {
    let app = DemoApp::start("v1", &[]);
    let proxy = proxy_of(&app, 8);
    let addr = proxy.local_addr;
    let slow = tokio::spawn(get(addr, "/slow?ms=4000"));
    wait_until(
        "the slow request in flight",
        Duration::from_secs(10),
        || proxy.stats()[0].in_flight == 1,
    );
    // More idle connections than the limit: the rest wait in the backlog.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    wait_until("the proxy to be full", Duration::from_secs(10), || {
        proxy.client_connections() == 8
    });
    let most = Arc::new(AtomicUsize::new(0));
    let watch = {
        let (proxy, most) = (proxy.clone(), most.clone());
        tokio::spawn(async move {
            loop {
                most.fetch_max(proxy.client_connections(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), get(addr, "/"))
        .await
        .expect("a new client answered while the proxy is full of idle connections");
    assert_eq!(status, 200, "{body}");
    watch.abort();
    assert!(
        most.load(Ordering::Relaxed) <= 8,
        "{} connections open at once",
        most.load(Ordering::Relaxed)
    );
    // The request in progress was never closed for room.
    assert_eq!(slow.await.unwrap(), (200, "slow done\n".to_owned()));
    // The idle ones that made room were closed by the proxy, oldest first.
    wait_until(
        "the idle connections that made room to be closed",
        Duration::from_secs(10),
        || idle.iter().filter(|c| closed(c)).count() >= 13,
    );
}

/// Whether the proxy closed `stream` (a read ends at once; nothing is ever sent on it).
fn closed(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_connection_busy_a_new_one_waits_for_a_place() {
    const SLOW: Duration = Duration::from_millis(1500);
    let app = DemoApp::start("v1", &[]);
    let proxy = proxy_of(&app, 3);
    let addr = proxy.local_addr;
    let started = Instant::now();
    let busy: Vec<_> = (0..3)
        .map(|_| tokio::spawn(get(addr, "/slow?ms=1500")))
        .collect();
    wait_until("three requests in flight", Duration::from_secs(10), || {
        proxy.stats()[0].in_flight == 3
    });
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), get(addr, "/"))
        .await
        .expect("the waiting client answered once a place freed");
    let waited = started.elapsed();
    assert_eq!(status, 200, "{body}");
    for request in busy {
        assert_eq!(
            request.await.unwrap(),
            (200, "slow done\n".to_owned()),
            "none was cut"
        );
    }
    // No place freed before the slow requests' 1.5 s were up.
    assert!(
        waited >= SLOW,
        "answered {waited:?} after the busy requests began: before a place freed"
    );
}
