//! Clients that stop in the middle of a request (`app.body_timeout`, `send_timeout`,
//! `min_rate`): a stalled or trickling request body is answered 408, a client that does not take
//! its response is cut, and neither counts against the instance. A slow but steady upload or
//! download, and a response that streams for longer than the timeouts, go through whole. A
//! request body on its way to an instance over HTTP/2 (`upstream: h2c`) is paced the same.

use std::time::{Duration, Instant};

use cutover::protocol::app::Upstream;
use cutover::supervisor::proxy::{ClientLimits, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::setup::{connect, get_on, proxy_for};
use crate::support::load::DemoApp;
use crate::support::wait_until;

/// `body_timeout` and `send_timeout` in these tests.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Room for a loaded test machine on top of the timeout.
const LATEST: Duration = Duration::from_secs(2 + 4);

async fn paced_proxy(app: &DemoApp) -> Proxy {
    let proxy = proxy_for(app).await;
    proxy.set_client_limits(ClientLimits {
        body_timeout: TIMEOUT,
        send_timeout: TIMEOUT,
        ..ClientLimits::default()
    });
    proxy
}

/// Everything the proxy sends until it closes the connection (at most 15 s).
async fn until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let seen = String::from_utf8_lossy(&seen).into_owned();
    assert!(read.is_ok(), "still open after 15 s; got {seen:?}");
    seen
}

/// The request was answered 408, `after` the body began: not before the timeout, nor long after.
fn assert_answered_408(answer: &str, after: Duration) {
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        after >= TIMEOUT && after <= LATEST,
        "cut {after:?} after the body began; expected between {TIMEOUT:?} and {LATEST:?}"
    );
}

/// The instance was not blamed for what the client did.
fn no_instance_error(proxy: &Proxy) {
    let stats = proxy.stats();
    assert!(
        stats.iter().all(|s| s.errors_5xx == 0 && s.in_flight == 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_answered_408_after_the_body_timeout() {
    let app = DemoApp::start("v1", &[]);
    stalled_body_is_answered_408(&paced_proxy(&app).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_request_body_is_cut_though_no_gap_reaches_the_timeout() {
    let app = DemoApp::start("v1", &[]);
    trickling_body_is_answered_408(&paced_proxy(&app).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_upload_goes_through() {
    let app = DemoApp::start("v1", &[]);
    steady_upload_goes_through(&paced_proxy(&app).await).await;
}

/// The paced proxy in front of an instance that speaks HTTP/2 only (`upstream: h2c`): the body
/// goes on over HTTP/2, under the same rule.
async fn paced_h2c_proxy(app: &DemoApp) -> Proxy {
    let proxy = paced_proxy(app).await;
    proxy
        .set_upstream("shop", Upstream::H2c, None)
        .expect("h2c needs no trust");
    proxy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_to_the_instance_a_stalled_request_body_is_answered_408() {
    let app = DemoApp::start("v1", &["--h2c"]);
    stalled_body_is_answered_408(&paced_h2c_proxy(&app).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_to_the_instance_a_trickling_request_body_is_cut() {
    let app = DemoApp::start("v1", &["--h2c"]);
    trickling_body_is_answered_408(&paced_h2c_proxy(&app).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_to_the_instance_a_slow_but_steady_upload_goes_through() {
    let app = DemoApp::start("v1", &["--h2c"]);
    steady_upload_goes_through(&paced_h2c_proxy(&app).await).await;
}

async fn stalled_body_is_answered_408(proxy: &Proxy) {
    let mut stream = TcpStream::connect(proxy.local_addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: shop\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = until_closed(&mut stream).await;
    assert_answered_408(&answer, started.elapsed());
    no_instance_error(proxy);
}

async fn trickling_body_is_answered_408(proxy: &Proxy) {
    let stream = TcpStream::connect(proxy.local_addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"POST /upload HTTP/1.1\r\nHost: shop\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // A byte every eighth of the timeout: far below the 500 bytes/s of `min_rate`.
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            tokio::time::sleep(TIMEOUT / 8).await;
            if writer.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let answer = until_closed(&mut reader).await;
    trickle.abort();
    assert_answered_408(&answer, started.elapsed());
    no_instance_error(proxy);
}

async fn steady_upload_goes_through(proxy: &Proxy) {
    let mut stream = TcpStream::connect(proxy.local_addr).await.unwrap();
    const PIECE: usize = 4096;
    const PIECES: usize = 12;
    stream
        .write_all(
            format!(
                "POST /upload HTTP/1.1\r\nHost: shop\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                PIECE * PIECES
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // 3.6 s in all, longer than the timeout: a deadline for the whole body would cut it.
    for _ in 0..PIECES {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.write_all(&[b'x'; PIECE]).await.unwrap();
    }
    let answer = until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("received 49152 bytes\n"), "{answer}");
}

/// A connection whose client takes at most `receive_buffer` bytes unread: the proxy's writes
/// block soon after the client stops reading.
async fn small_window(proxy: &Proxy) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(proxy.local_addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_response_is_cut() {
    let app = DemoApp::start("v1", &[]);
    let proxy = paced_proxy(&app).await;
    let mut stream = small_window(&proxy).await;
    const SIZE: usize = 64 << 20;
    stream
        .write_all(format!("GET /bytes?n={SIZE} HTTP/1.1\r\nHost: shop\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    wait_until("the response in flight", Duration::from_secs(10), || {
        proxy.stats()[0].in_flight == 1
    });
    // Not a byte read meanwhile: the response must stop holding the instance on its own.
    wait_until(
        "the proxy to give up on the response",
        Duration::from_secs(15),
        || proxy.stats()[0].in_flight == 0,
    );
    let after = started.elapsed();
    assert!(after >= TIMEOUT, "cut {after:?} after the request");
    let taken = until_closed(&mut stream).await;
    assert!(
        taken.starts_with("HTTP/1.1 200"),
        "{}",
        &taken[..taken.len().min(200)]
    );
    assert!(
        taken.len() < SIZE,
        "the whole response went out: {}",
        taken.len()
    );
    no_instance_error(&proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_and_a_long_stream_are_not_cut() {
    let app = DemoApp::start("v1", &[]);
    let proxy = paced_proxy(&app).await;
    // A response that takes 4 s to produce, twice the timeouts, read as it comes.
    let mut sender = connect(proxy.local_addr).await;
    let (status, body) = get_on(&mut sender, "/stream?chunks=11&interval_ms=400").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.lines().count(), 11, "{body}");

    // 8 MiB taken 128 KiB every 100 ms (about 6 s), more than the proxy's socket buffers hold:
    // its writes block for seconds in all, longer than the timeout, but the client keeps taking
    // bytes.
    let mut stream = small_window(&proxy).await;
    const SIZE: usize = 8 << 20;
    stream
        .write_all(
            format!("GET /bytes?n={SIZE} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    const SLICE: usize = 128 << 10;
    let mut taken = 0;
    let mut buf = vec![0u8; 4096];
    loop {
        let mut slice = 0;
        while slice < SLICE {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => slice += n,
                Err(e) => panic!("cut after {taken} bytes: {e}"),
            }
        }
        taken += slice;
        if slice < SLICE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken > SIZE, "{taken} bytes, head and body, of {SIZE}");
    no_instance_error(&proxy);
}
