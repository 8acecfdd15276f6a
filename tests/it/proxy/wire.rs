//! The proxy's HTTP/1.1 to instances on the wire: request bodies (by length and chunked), HEAD,
//! request ids, and keep-alive connections the instance closes, against small backends written here so that
//! every byte is known.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::setup::{connect, http_instance, instance, proxy_to, raw, Request};

/// A backend that answers with what it got: request id, method, framing headers and body.
async fn echo_backend() -> SocketAddr {
    http_instance(|req: http::Request<Incoming>| async move {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
        };
        let seen = format!(
            "rid={} {} te={} cl={}",
            header("x-request-id"),
            req.method(),
            header("transfer-encoding"),
            header("content-length")
        );
        let body = req.into_body().collect().await?.to_bytes();
        Ok(format!("{seen} body={}", String::from_utf8_lossy(&body)))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_instance_whole() {
    let proxy = proxy_to(echo_backend().await).await;
    let addr = proxy.local_addr;
    let by_length = raw(
        addr,
        "POST /a HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    )
    .await;
    assert!(by_length.starts_with("HTTP/1.1 200"), "{by_length}");
    assert!(
        by_length.ends_with("POST te=- cl=5 body=hello"),
        "{by_length}"
    );

    let chunked = raw(
        addr,
        "POST /b HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        chunked.ends_with("POST te=chunked cl=- body=abcde"),
        "{chunked}"
    );

    let head = raw(
        addr,
        "HEAD /c HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The length of the body a GET would get: `rid=<16 hex digits> HEAD te=- cl=- body=`.
    assert!(head.contains("content-length: 41"), "{head}");
    assert!(
        head.ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {head}"
    );
}

/// A backend that answers every request with a keep-alive response and then closes the
/// connection, as an instance whose idle timeout strikes right after answering.
async fn closing_backend() -> SocketAddr {
    instance(|mut stream: TcpStream| async move {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_instance_closed_fails_no_request() {
    let proxy = proxy_to(closing_backend().await).await;
    let mut sender = connect(proxy.local_addr).await;
    for i in 0..50 {
        let answer = Request::get("/")
            .header("host", "t")
            .send_on(&mut sender)
            .await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, "ok"),
            "request {i}"
        );
    }
    let stats = &proxy.stats()[0];
    assert_eq!((stats.requests, stats.errors_5xx), (50, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_carries_an_id_to_the_instance_and_back() {
    let proxy = proxy_to(echo_backend().await).await;
    let id_of = |answer: &str| {
        answer
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no x-request-id in the answer:\n{answer}"))
    };
    // A new id: 16 hex digits, the same at the instance and in the answer, new each time.
    let get = "GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n";
    let first = raw(proxy.local_addr, get).await;
    let id = id_of(&first);
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{first}"
    );
    assert!(first.contains(&format!("rid={id}")), "{first}");
    let second = raw(proxy.local_addr, get).await;
    assert_ne!(id_of(&second), id);
    // An id set in front (a load balancer) is kept.
    let given = "GET / HTTP/1.1\r\nHost: shop\r\nX-Request-Id: lb-42\r\nConnection: close\r\n\r\n";
    let answer = raw(proxy.local_addr, given).await;
    assert_eq!(id_of(&answer), "lb-42");
    assert!(answer.contains("rid=lb-42"), "{answer}");
}

/// A backend that refuses every upload as soon as it has the request head, without reading the
/// body, and keeps the connection open.
async fn refusing_backend() -> SocketAddr {
    instance(|mut stream: TcpStream| async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let answer = "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 10\r\n\r\ntoo large\n";
        let _ = stream.write_all(answer.as_bytes()).await;
        // Open, and reading nothing more, until the test ends.
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_answering_before_the_body_is_whole_is_heard() {
    let proxy = proxy_to(refusing_backend().await).await;
    let mut stream = TcpStream::connect(proxy.local_addr).await.unwrap();
    // 10 MB announced, 64 KiB sent: the body can never be whole.
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: shop\r\nContent-Length: 10000000\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&[b'x'; 64 * 1024]).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !answer.ends_with(b"too large\n") {
            let n = stream.read(&mut chunk).await.expect("read the answer");
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no answer within 10s: {:?}",
            String::from_utf8_lossy(&answer)
        )
    });
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailer_fields_are_passed_on_both_ways() {
    // An instance that keeps the request as it came and answers with a trailer of its own.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let instance = listener.local_addr().unwrap();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !chunked_request_complete(&request) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the proxy closed mid-request");
            request.extend_from_slice(&buf[..n]);
        }
        let _ = got_tx.send(String::from_utf8_lossy(&request).into_owned());
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status\r\n\
                  connection: close\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n",
            )
            .await
            .unwrap();
    });
    let proxy = proxy_to(instance).await;

    let answer = raw(
        proxy.local_addr,
        "POST /t HTTP/1.1\r\nhost: t\r\nte: trailers\r\ntrailer: x-checksum\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         3\r\nabc\r\n0\r\nx-checksum: 900150983cd24fb0\r\n\r\n",
    )
    .await;
    let request = got_rx.await.expect("the instance got the request");
    let lower = request.to_ascii_lowercase();
    assert!(lower.contains("\r\nte: trailers\r\n"), "{request}");
    assert!(lower.contains("\r\ntrailer: x-checksum\r\n"), "{request}");
    assert!(
        request.ends_with("3\r\nabc\r\n0\r\nx-checksum: 900150983cd24fb0\r\n\r\n"),
        "{request}"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n"),
        "{answer}"
    );
}

/// Whether a chunked request has come whole: its last chunk, then its trailer fields (if any)
/// up to an empty line.
fn chunked_request_complete(request: &[u8]) -> bool {
    let text = String::from_utf8_lossy(request);
    text.find("\r\n0\r\n")
        .is_some_and(|last| text[last + 2..].contains("\r\n\r\n"))
}

/// An instance that closes a keep-alive connection once it has been idle for `idle`, without
/// saying so (no `Keep-Alive: timeout=`), as many app servers do; it counts each request id.
async fn idle_closing_backend(idle: Duration) -> (SocketAddr, Arc<Mutex<HashMap<String, u32>>>) {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let counts = seen.clone();
    let addr = instance(move |mut stream: TcpStream| {
        let seen = seen.clone();
        async move {
            let mut buf = Vec::new();
            loop {
                let head_end = loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    let read = if buf.is_empty() {
                        match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
                            Ok(read) => read,
                            // Idle too long: closed, with nothing said.
                            Err(_) => return,
                        }
                    } else {
                        stream.read(&mut chunk).await
                    };
                    match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let field = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_owned())
                };
                let length: usize = field("content-length:").map_or(0, |l| l.parse().unwrap());
                while buf.len() < head_end + length {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..head_end + length);
                let id = field("x-request-id:").unwrap_or_default();
                *seen.lock().unwrap().entry(id).or_default() += 1;
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if stream.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_racing_an_instance_s_idle_close_all_get_through_once() {
    const IDLE: Duration = Duration::from_millis(100);
    const CLIENTS: usize = 8;
    const POSTS: usize = 80;
    let (instance, seen) = idle_closing_backend(IDLE).await;
    let proxy = proxy_to(instance).await;
    let addr = proxy.local_addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(async move {
                let mut sender = connect(addr).await;
                let mut failed = Vec::new();
                for n in 0..POSTS {
                    // Around the instance's idle timeout, so that pooled connections are taken
                    // as the instance closes them.
                    let pause = 95 + (n * 7 + c * 3) % 11;
                    tokio::time::sleep(Duration::from_millis(pause as u64)).await;
                    let answer = Request::new("POST", "/orders")
                        .header("host", "t")
                        .header("x-request-id", &format!("c{c}-{n}"))
                        .body(&b"{\"qty\":1}"[..])
                        .send_on(&mut sender)
                        .await;
                    if (answer.status, answer.body.as_str()) != (200, "ok") {
                        failed.push(format!("c{c}-{n}: {} {}", answer.status, answer.body));
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = Vec::new();
    for client in clients {
        failed.extend(client.await.unwrap());
    }
    assert!(failed.is_empty(), "POSTs failed: {failed:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        CLIENTS * POSTS,
        "every POST reached the instance"
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "POSTs the instance got twice: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_a_proxy_must_not_pass_on_are_answered_by_it() {
    let proxy = proxy_to(echo_backend().await).await;
    let addr = proxy.local_addr;
    let many_headers: String = (0..101).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let cases = [
        (
            "GET / HTTP/1.1\r\nconnection: close\r\n\r\n".to_owned(),
            "400",
        ),
        (
            "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n".to_owned(),
            "400",
        ),
        (
            "CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\n\r\n".to_owned(),
            "405",
        ),
        (
            format!("GET / HTTP/1.1\r\nhost: t\r\n{many_headers}connection: close\r\n\r\n"),
            "431",
        ),
        // HTTP/1.0 needs no Host.
        ("GET / HTTP/1.0\r\n\r\n".to_owned(), "200"),
    ];
    for (request, status) in cases {
        let answer = raw(addr, &request).await;
        let line = answer.lines().next().unwrap_or_default().to_owned();
        assert!(
            line.starts_with("HTTP/1.") && line[9..].starts_with(status),
            "{:?}: {line:?}",
            request.lines().next()
        );
    }
    // None of the refused ones reached the instance.
    assert_eq!(proxy.stats()[0].requests, 1, "{:?}", proxy.stats());
}
