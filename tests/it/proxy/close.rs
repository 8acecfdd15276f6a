//! The proxy's side of a supervisor restart: `close` lets every client connection go without
//! failing a request, `listener` copies keep the socket open for the next owner, and a proxy made
//! with `from_listener_held` lets waiting clients in only once told to.

use std::time::{Duration, Instant};

use cutover::supervisor::proxy::Proxy;
use tokio::net::TcpStream;

use super::setup::{connect, proxy_for, route_to, Request, Sender};
use crate::support::load::{DemoApp, Load};

/// One GET on `sender`: the status and the `Connection` header of the answer.
async fn get(sender: &mut Sender) -> (u16, Option<String>) {
    let answer = Request::get("/").send_on(sender).await;
    (
        answer.status,
        answer.header("connection").map(str::to_owned),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_answers_a_keep_alive_connection_once_more_then_closes_it() {
    let app = DemoApp::start("v1", &[]);
    let proxy = proxy_for(&app).await;
    let mut sender = connect(proxy.local_addr).await;
    assert_eq!(get(&mut sender).await, (200, None));

    // `join!` polls in order: the close has begun when the request goes out.
    let (cut, answer) = tokio::join!(proxy.close(Duration::from_secs(10)), async {
        let answer = get(&mut sender).await;
        // The client does what HTTP says after `Connection: close`: it lets go.
        drop(sender);
        answer
    });
    assert_eq!(answer, (200, Some("close".to_owned())));
    assert_eq!(cut, 0, "the connection closed on its own, none was cut");
    let refused = TcpStream::connect(proxy.local_addr).await;
    assert!(
        refused.is_err(),
        "no copy of the listener is left: the port is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_lets_an_idle_connection_go_after_a_second() {
    let app = DemoApp::start("v1", &[]);
    let proxy = proxy_for(&app).await;
    let mut sender = connect(proxy.local_addr).await;
    assert_eq!(get(&mut sender).await, (200, None));
    let started = Instant::now();
    assert_eq!(proxy.close(Duration::from_secs(20)).await, 0);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "an idle connection is closed after about 1s, not at the deadline: {took:?}"
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while !sender.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the client saw its connection closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_copy_keeps_the_port_open_under_load_for_the_next_proxy() {
    let app = DemoApp::start("v1", &[]);
    let old = proxy_for(&app).await;
    let load = Load::start(old.local_addr, 4, "/");
    load.wait_for_more_ok(200, Duration::from_secs(30));

    let copy = old.listener().expect("a copy of the listener");
    let new = Proxy::from_listener_held(copy).expect("serve on the copy");
    new.set_route(route_to(&app));
    new.start_accepting();
    assert_eq!(old.close(Duration::from_secs(10)).await, 0);
    drop(old);
    load.wait_for_more_ok(200, Duration::from_secs(30));
    let report = load.stop();
    assert_eq!(report.failures(), 0, "{report:?}");
    assert!(new.stats()[0].requests >= 200, "{:?}", new.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_proxy_answers_waiting_clients_once_it_accepts() {
    let app = DemoApp::start("v1", &[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Proxy::from_listener_held(listener).unwrap();
    let waiting = tokio::spawn(async move {
        let mut sender = connect(addr).await;
        get(&mut sender).await
    });
    // The connection sits in the backlog: no 503 from the empty route, no answer at all.
    let early = tokio::time::timeout(Duration::from_millis(300), async {
        while !waiting.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(early.is_err(), "answered before the proxy accepted");
    proxy.set_route(route_to(&app));
    proxy.start_accepting();
    assert_eq!(waiting.await.unwrap(), (200, None));
}
