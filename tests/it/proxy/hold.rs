//! Holding requests (`app.hold_requests`): while no instance can take a request — none routed,
//! or none accepting connections — it waits for a route that has one, up to the hold, and is
//! answered then instead of failing at once; when the hold runs out it fails as before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover::supervisor::proxy::Backend;

use super::setup::{backend, get, proxy, route};
use crate::support::free_port;
use crate::support::load::DemoApp;

/// How long the route stays without a usable instance while a request waits.
const GAP: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_within_the_hold_for_an_instance_to_be_routed() {
    let app = DemoApp::start("v1", &[]);
    let proxy = proxy().await;
    proxy.set_hold(Duration::from_secs(20));
    let started = Instant::now();
    let request = tokio::spawn(get(proxy.local_addr, "/"));
    tokio::time::sleep(GAP).await;
    assert!(!request.is_finished(), "answered while nothing was routed");
    proxy.set_route(route(vec![backend("v1-0", &app)]));
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from v1 "), "{body}");
    assert!(started.elapsed() >= GAP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_while_no_instance_accepts_connections() {
    let proxy = proxy().await;
    proxy.set_hold(Duration::from_secs(20));
    // Routed, but nothing listens there: an instance that crashed and is restarting.
    let gone = Arc::new(Backend {
        id: "v1-0".into(),
        version: "v1".into(),
        addr: ([127, 0, 0, 1], free_port()).into(),
    });
    proxy.set_route(route(vec![gone]));
    let request = tokio::spawn(get(proxy.local_addr, "/"));
    tokio::time::sleep(GAP).await;
    assert!(
        !request.is_finished(),
        "answered while no instance listened"
    );
    let app = DemoApp::start("v1", &[]);
    proxy.set_route(route(vec![backend("v1-1", &app)]));
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let stats = proxy.stats();
    let refused = stats
        .iter()
        .find(|s| s.id == "v1-0")
        .map(|s| s.failed_connects);
    assert!(
        refused >= Some(1),
        "the refused connects are counted: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_hold_runs_out_the_request_fails_as_without_one() {
    let proxy = proxy().await;
    let hold = Duration::from_millis(400);
    proxy.set_hold(hold);
    let started = Instant::now();
    let (status, body) = get(proxy.local_addr, "/").await;
    assert_eq!(status, 503, "{body}");
    let waited = started.elapsed();
    assert!(
        waited >= hold && waited < Duration::from_secs(5),
        "answered after {waited:?} with a hold of {hold:?}"
    );
    // No hold: at once.
    proxy.set_hold(Duration::ZERO);
    let started = Instant::now();
    assert_eq!(get(proxy.local_addr, "/").await.0, 503);
    assert!(started.elapsed() < hold);
}
