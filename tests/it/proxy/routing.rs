//! The proxy with real backends: keep-alive, WebSocket, retry on failed connect, drains,
//! counters; the load generator runs on a thread of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::setup::{backend, connect, get, get_on, proxy, proxy_for, route};
use crate::support::load::{DemoApp, Load};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_are_spread_over_the_route() {
    let (a, b) = (DemoApp::start("v1", &[]), DemoApp::start("v1", &[]));
    let proxy = proxy().await;
    proxy.set_route(route(vec![backend("v1-a", &a), backend("v1-b", &b)]));
    let mut sender = connect(proxy.local_addr).await;
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (status, body) = get_on(&mut sender, "/").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("hello from v1 (pid "), "{body}");
        pids.insert(body);
    }
    assert_eq!(
        pids.len(),
        2,
        "round robin reached both instances: {pids:?}"
    );
    let stats = proxy.stats();
    assert_eq!(stats.iter().map(|s| s.requests).sum::<u64>(), 10);
    assert!(
        stats.iter().all(|s| s.requests == 5 && s.in_flight == 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_route_is_503_and_all_refused_is_502() {
    let proxy = proxy().await;
    let (status, body) = get(proxy.local_addr, "/").await;
    assert_eq!(status, 503, "{body}");
    let mut gone = DemoApp::start("v1", &[]);
    let dead = backend("v1-dead", &gone);
    gone.kill();
    proxy.set_route(route(vec![dead]));
    let (status, body) = get(proxy.local_addr, "/").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(proxy.stats()[0].failed_connects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_swap_under_load_fails_no_request() {
    let (v1, v2) = (DemoApp::start("v1", &[]), DemoApp::start("v2", &[]));
    let proxy = proxy_for(&v1).await;
    let load = Load::start(proxy.local_addr, 8, "/");
    load.wait_for_more_ok(300, Duration::from_secs(30));
    proxy.set_route(route(vec![backend("v2-0", &v2)]));
    assert_eq!(proxy.drain("v1-0", Duration::from_secs(10)).await, 0);
    // After the drain, only v2 answers, on the clients' same keep-alive connections. (The last
    // v1 answers may still be on their way to the clients when drain returns: hence the margin.)
    load.wait_for_more_ok(100, Duration::from_secs(30));
    let before = load.snapshot();
    load.wait_for_more_ok(300, Duration::from_secs(30));
    let report = load.stop();
    assert_eq!(report.failures(), 0, "{report:?}");
    assert_eq!(
        report.versions.get("v1"),
        before.versions.get("v1"),
        "v1 answered after its drain"
    );
    assert!(report.versions["v2"] >= 300, "{report:?}");
    let stats = proxy.stats();
    assert_eq!(stats.len(), 1, "drained v1 is forgotten: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_under_load_fails_no_request() {
    let (mut a, b) = (DemoApp::start("v1", &[]), DemoApp::start("v1", &[]));
    let proxy = proxy().await;
    proxy.set_route(route(vec![backend("v1-a", &a), backend("v1-b", &b)]));
    let load = Load::start(proxy.local_addr, 8, "/");
    load.wait_for_more_ok(300, Duration::from_secs(30));
    a.kill();
    load.wait_for_more_ok(500, Duration::from_secs(30));
    let report = load.stop();
    assert_eq!(report.failures(), 0, "{report:?}");
    let killed = proxy.stats().into_iter().find(|s| s.id == "v1-a").unwrap();
    assert!(
        killed.failed_connects > 0,
        "connects to the dead instance were retried: {killed:?}"
    );
}

/// A client-side WebSocket handshake on a raw stream; returns the stream after the 101.
async fn websocket(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "handshake cut short: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    stream
}

/// Sends a masked text frame and reads the echoed one.
async fn echo(stream: &mut TcpStream, text: &str) -> String {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).await.unwrap();
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x81, "a final text frame");
    let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
    stream.read_exact(&mut payload).await.unwrap();
    String::from_utf8(payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_goes_through_and_counts_as_in_flight() {
    let app = DemoApp::start("v1", &[]);
    let proxy = proxy_for(&app).await;
    let mut ws = websocket(proxy.local_addr).await;
    assert_eq!(
        echo(&mut ws, "hello through the proxy").await,
        "hello through the proxy"
    );
    assert_eq!(echo(&mut ws, "again").await, "again");
    assert_eq!(proxy.stats()[0].in_flight, 1, "an open tunnel is in flight");
    drop(ws);
    let drained = proxy.drain("v1-0", Duration::from_secs(10)).await;
    assert_eq!(drained, 0, "the closed tunnel is no longer in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_responses_are_passed_on_as_they_come() {
    let app = DemoApp::start("v1", &[]);
    let proxy = proxy_for(&app).await;
    let mut sender = connect(proxy.local_addr).await;
    let req = http::Request::get("/stream?chunks=4&interval_ms=300")
        .header("host", "shop.example")
        .body(Default::default())
        .unwrap();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = Instant::now();
    assert_eq!(first, "chunk 0\n");
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "chunk 1\nchunk 2\nchunk 3\n");
    assert!(
        first_at.elapsed() >= Duration::from_millis(800),
        "the first chunk came before the rest was produced, not buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_a_slow_request() {
    let (old, new) = (DemoApp::start("v1", &[]), DemoApp::start("v2", &[]));
    let proxy = Arc::new(proxy().await);
    proxy.set_route(route(vec![backend("v1-0", &old)]));
    let addr = proxy.local_addr;
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=1500").await });
    let p = proxy.clone();
    crate::support::wait_until(
        "the slow request in flight",
        Duration::from_secs(20),
        || p.stats()[0].in_flight == 1,
    );
    proxy.set_route(route(vec![backend("v2-0", &new)]));
    let started = Instant::now();
    assert_eq!(proxy.drain("v1-0", Duration::from_secs(20)).await, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "drain returned before the request ended"
    );
    assert_eq!(slow.await.unwrap(), (200, "slow done\n".to_owned()));
    let (_, body) = get(addr, "/").await;
    assert!(body.starts_with("hello from v2"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_cuts_a_websocket_at_the_deadline() {
    let app = DemoApp::start("v1", &[]);
    let proxy = proxy_for(&app).await;
    let mut ws = websocket(proxy.local_addr).await;
    assert_eq!(echo(&mut ws, "ping").await, "ping");
    proxy.set_route(route(vec![]));
    let started = Instant::now();
    let cut = proxy.drain("v1-0", Duration::from_millis(700)).await;
    assert_eq!(cut, 1, "the open WebSocket was cut");
    assert!(started.elapsed() >= Duration::from_millis(700));
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), ws.read(&mut buf))
        .await
        .expect("the cut tunnel closes the client side");
    assert!(matches!(read, Ok(0) | Err(_)), "expected EOF, got {read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_see_5xx_and_latency() {
    let app = DemoApp::start("v1", &["--error-rate", "1.0"]);
    let proxy = proxy_for(&app).await;
    let mut sender = connect(proxy.local_addr).await;
    for _ in 0..10 {
        assert_eq!(get_on(&mut sender, "/").await.0, 500);
    }
    assert_eq!(get_on(&mut sender, "/healthz").await.0, 200);
    let stats = &proxy.stats()[0];
    assert_eq!(
        (stats.requests, stats.errors_5xx, stats.failed_connects),
        (11, 10, 0)
    );
    assert!(
        stats.p50_us > 0 && stats.p99_us >= stats.p50_us,
        "{stats:?}"
    );
}
