//! PROXY protocol from a load balancer in front: v1 and v2 headers name the client the instance
//! sees in `X-Forwarded-For`; a connection without one is closed unanswered.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::setup::{http_instance, proxy_to, raw};

/// A backend that answers with the `X-Forwarded-For` it got.
async fn forwarded_for_backend() -> SocketAddr {
    http_instance(|req: http::Request<Incoming>| async move {
        let xff = req
            .headers()
            .get("x-forwarded-for")
            .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
        Ok(format!("xff={xff}"))
    })
    .await
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_s_header_names_the_client_and_a_bare_connection_is_closed() {
    let proxy = proxy_to(forwarded_for_backend().await).await;
    // Off: the peer is the client.
    let answer = raw(proxy.local_addr, GET).await;
    assert!(answer.ends_with("xff=127.0.0.1"), "{answer}");

    proxy.set_proxy_protocol(true);
    let mut v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".to_vec();
    v1.extend_from_slice(GET);
    let answer = raw(proxy.local_addr, &v1).await;
    assert!(answer.ends_with("xff=203.0.113.7"), "{answer}");

    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend([
        0x21, 0x11, 0, 12, 198, 51, 100, 9, 127, 0, 0, 1, 0x15, 0xb3, 0, 80,
    ]);
    v2.extend_from_slice(GET);
    let answer = raw(proxy.local_addr, &v2).await;
    assert!(answer.ends_with("xff=198.51.100.9"), "{answer}");

    // A balancer's own health check (UNKNOWN) is served with the peer's address.
    let mut unknown = b"PROXY UNKNOWN\r\n".to_vec();
    unknown.extend_from_slice(GET);
    let answer = raw(proxy.local_addr, &unknown).await;
    assert!(answer.ends_with("xff=127.0.0.1"), "{answer}");

    // Without a header, nothing is answered: the connection is closed (reset, as the request
    // was left unread).
    let mut stream = TcpStream::connect(proxy.local_addr).await.unwrap();
    stream.write_all(GET).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the proxy ended the exchange within 10s");
    match read {
        Ok(_) => assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer)),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
    }
}
