//! The proxy's own life: `shutdown` stops accepting while open connections are still served, and
//! dropping it frees its address before the drop returns (the supervisor answers "stopped" right
//! after), whatever runtime it was started from.

use std::time::Duration;

use cutover::supervisor::proxy::Proxy;

use super::setup::{connect, get_on, proxy_for, route_to};
use crate::support::load::DemoApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_open_connections_go_on() {
    let app = DemoApp::start("v1", &[]);
    let proxy = proxy_for(&app).await;
    let addr = proxy.local_addr;
    let mut open = connect(addr).await;
    assert_eq!(get_on(&mut open, "/").await.0, 200);
    proxy.shutdown();
    crate::support::wait_until(
        "the proxy's address refusing connections",
        Duration::from_secs(10),
        || std::net::TcpStream::connect(addr).is_err(),
    );
    for _ in 0..3 {
        assert_eq!(
            get_on(&mut open, "/").await.0,
            200,
            "open connection served"
        );
    }
}

#[test]
fn drop_frees_the_address_at_once() {
    let app = DemoApp::start("v1", &[]);
    // The supervisor's runtime (the proxy's workers are threads of their own).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (proxy, mut open) = runtime.block_on(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy::with_workers(listener, 3, false).unwrap();
        proxy.set_route(route_to(&app));
        let mut open = connect(proxy.local_addr).await;
        assert_eq!(get_on(&mut open, "/").await.0, 200);
        (proxy, open)
    });
    let addr = proxy.local_addr;
    drop(proxy);
    let rebound = std::net::TcpListener::bind(addr);
    assert!(
        rebound.is_ok(),
        "{addr} still taken after the drop: {rebound:?}"
    );
    drop(rebound);
    // Its connections went with it.
    let answer = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            open.ready().await.map(|_| ())?;
            open.send_request(
                http::Request::get("/")
                    .header("host", "t")
                    .body(Default::default())
                    .unwrap(),
            )
            .await
            .map(|_| ())
        })
        .await
    });
    assert!(
        matches!(answer, Ok(Err(_))),
        "a connection of a dropped proxy still answered: {answer:?}"
    );
}
