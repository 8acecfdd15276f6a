//! The proxy closes the client connections nobody uses — an idle keep-alive connection, a client
//! too slow to finish its request head — and only those: a busy connection and a response that
//! streams for longer than the timeout are left alone.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::setup::{connect, get_on, proxy_for};
use crate::support::load::DemoApp;

const IDLE: Duration = Duration::from_millis(400);
/// Room for a loaded test machine on top of the three periods a closing may take.
const LATEST: Duration = Duration::from_millis(3 * 400 + 2000);

/// Reads one response with a `content-length` from a raw connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read a response");
        assert!(n > 0, "connection closed before the response was whole");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("a content-length");
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

/// How long until the peer closes `stream` (reads until end of file, at most 10 s).
async fn closed_after(stream: &mut TcpStream, since: Instant) -> Duration {
    let mut sink = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the proxy closed the connection within 10s");
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let app = DemoApp::start("v1", &[]);
    let proxy = proxy_for(&app).await;
    proxy.set_idle_timeout(IDLE);
    let mut stream = TcpStream::connect(proxy.local_addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let answered = Instant::now();
    let after = closed_after(&mut stream, answered).await;
    assert!(
        after >= IDLE && after <= LATEST,
        "closed {after:?} after its last answer; expected between {IDLE:?} and {LATEST:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_to_send_its_request_head_is_cut() {
    let app = DemoApp::start("v1", &[]);
    let proxy = proxy_for(&app).await;
    proxy.set_idle_timeout(IDLE);
    let mut stream = TcpStream::connect(proxy.local_addr).await.unwrap();
    let started = Instant::now();
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    // A header line every third of the timeout: bytes keep coming, the head never ends.
    let (mut reader, mut writer) = stream.split();
    let trickle = async {
        for n in 0.. {
            tokio::time::sleep(IDLE / 3).await;
            if writer
                .write_all(format!("x-slow-{n}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let mut sink = [0u8; 1024];
    let closed = async {
        if let Ok(n @ 1..) = reader.read(&mut sink).await {
            panic!(
                "answered a request whose head never ended: {}",
                String::from_utf8_lossy(&sink[..n])
            );
        }
    };
    tokio::select! {
        () = closed => {}
        () = trickle => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => panic!("still open after 10s"),
    }
    let after = started.elapsed();
    assert!(
        after >= IDLE && after <= LATEST,
        "cut {after:?} after it began; expected between {IDLE:?} and {LATEST:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_and_a_long_stream_are_not_idle() {
    let app = DemoApp::start("v1", &[]);
    let proxy = proxy_for(&app).await;
    proxy.set_idle_timeout(IDLE);
    let mut sender = connect(proxy.local_addr).await;
    // Requests every half period for five periods, all on the one connection.
    let until = Instant::now() + IDLE * 5;
    while Instant::now() < until {
        assert_eq!(get_on(&mut sender, "/").await.0, 200);
        tokio::time::sleep(IDLE / 2).await;
    }
    // A response streaming for four periods, with no other request meanwhile.
    let req = http::Request::get("/stream?chunks=8&interval_ms=200")
        .header("host", "shop.example")
        .body(Default::default())
        .unwrap();
    sender
        .ready()
        .await
        .expect("the busy connection is still open");
    let body = sender.send_request(req).await.unwrap().into_body();
    let body = body.collect().await.expect("the whole stream").to_bytes();
    assert_eq!(body.iter().filter(|&&b| b == b'\n').count(), 8, "{body:?}");
}
