//! Response queue poisoning: an instance (or a client) that puts bytes on a pooled connection
//! past the end of an exchange must never have them delivered to anyone. Several clients, each
//! with requests of distinct ids, share the proxy with one that asks a raw-socket instance to
//! misframe its answers in every way seen in the wild; no client may ever get another's answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::setup::{connect as client, instance, proxy_to, Request, Sender as Client};

/// How long after its answer the instance writes what it should not have.
const LATE: Duration = Duration::from_millis(5);

/// A complete answer naming request `id`, as the instance writes it.
fn answer(status: &str, id: &str) -> String {
    let body = format!("answer for {id}");
    format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nx-request-id: {id}\r\n\r\n{body}",
        body.len()
    )
}

/// One request as the instance reads it.
struct Asked {
    method: String,
    path: String,
    id: String,
    length: usize,
}

/// Reads a request head from `buf` (reading more from `stream`); `None` at the end.
async fn read_request(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Asked> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = req.parse(buf) {
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let asked = Asked {
                method: req.method?.to_owned(),
                path: req.path?.to_owned(),
                id: header("x-request-id").unwrap_or_default(),
                length: header("content-length").map_or(0, |l| l.parse().unwrap()),
            };
            buf.advance(len);
            return Some(asked);
        }
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// Reads (and forgets) a request body of `length` bytes.
async fn skip_body(stream: &mut TcpStream, buf: &mut BytesMut, length: usize) -> Option<()> {
    while buf.len() < length {
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
    buf.advance(length);
    Some(())
}

/// An instance that answers `/ok` properly, echoing the request id, and misframes on demand.
async fn misframing_instance() -> SocketAddr {
    instance(serve).await
}

async fn serve(mut stream: TcpStream) -> Option<()> {
    let mut buf = BytesMut::new();
    loop {
        let asked = read_request(&mut stream, &mut buf).await?;
        let id = asked.id.as_str();
        match (asked.method.as_str(), asked.path.as_str()) {
            // A second answer a moment after the first, in a write of its own.
            (_, "/late-second") => {
                skip_body(&mut stream, &mut buf, asked.length).await?;
                stream
                    .write_all(answer("200 OK", id).as_bytes())
                    .await
                    .ok()?;
                tokio::time::sleep(LATE).await;
                let stray = answer("200 OK", &format!("{id}-again"));
                stream.write_all(stray.as_bytes()).await.ok()?;
            }
            // A HEAD answered with its body, later.
            ("HEAD", "/head-body") => {
                let body = answer("200 OK", &format!("{id}-body"));
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                stream.write_all(head.as_bytes()).await.ok()?;
                tokio::time::sleep(LATE).await;
                stream.write_all(body.as_bytes()).await.ok()?;
            }
            // Two lengths: the proxy reads by one, and the rest comes later.
            (_, "/two-lengths") => {
                skip_body(&mut stream, &mut buf, asked.length).await?;
                let rest = answer("200 OK", &format!("{id}-rest"));
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: {}\r\nx-request-id: {id}\r\n\r\nhello",
                    5 + rest.len()
                );
                stream.write_all(head.as_bytes()).await.ok()?;
                tokio::time::sleep(LATE).await;
                stream.write_all(rest.as_bytes()).await.ok()?;
            }
            // A body the app does not read: it is read as the next request.
            (_, "/ignore-body") => {
                stream
                    .write_all(answer("200 OK", id).as_bytes())
                    .await
                    .ok()?;
            }
            // `Expect: 100-continue` refused, the body left unread.
            (_, "/expect") => {
                stream
                    .write_all(answer("417 Expectation Failed", id).as_bytes())
                    .await
                    .ok()?;
            }
            _ => {
                skip_body(&mut stream, &mut buf, asked.length).await?;
                stream
                    .write_all(answer("200 OK", id).as_bytes())
                    .await
                    .ok()?;
            }
        }
    }
}

/// The misframing requests: method, path, a name for the ids, and whether the request carries
/// a smuggled request as its body (a POST also with `Expect: 100-continue`).
const MISFRAMED: [(&str, &str, &str, bool); 5] = [
    ("GET", "/late-second", "late", false),
    ("HEAD", "/head-body", "head", false),
    ("GET", "/two-lengths", "lengths", false),
    ("GET", "/ignore-body", "get-body", true),
    ("POST", "/expect", "expect", true),
];

/// Sends one request; the status and body of its answer (`None`: the connection failed).
async fn ask(
    client: &mut Client,
    method: &str,
    path: &str,
    id: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    let answer = Request::new(method, path)
        .header("x-request-id", id)
        .headers(extra)
        .body(body)
        .try_send_on(client)
        .await
        .ok()?;
    Some((answer.status, answer.body))
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    /// Answers that named another request than the one asked.
    wrong: AtomicU64,
    /// Innocent requests that got no good answer.
    failed: AtomicU64,
}

impl Tally {
    /// Checks an answer to request `id`: a body that names a request must name this one.
    fn check(&self, id: &str, got: &Option<(u16, String)>, innocent: bool) {
        match got {
            Some((_, body))
                if body.starts_with("answer for ") && body != &format!("answer for {id}") =>
            {
                eprintln!("request {id} got {body:?}");
                self.wrong.fetch_add(1, Ordering::Relaxed);
            }
            Some((200, _)) => {
                self.answered.fetch_add(1, Ordering::Relaxed);
            }
            _ if innocent => {
                eprintln!("innocent request {id} failed: {got:?}");
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_past_an_answer_never_reach_another_client() {
    let proxy = proxy_to(misframing_instance().await).await;
    let addr = proxy.local_addr;
    let tally = Arc::new(Tally::default());
    const INNOCENT: usize = 4;
    const ROUNDS: usize = 40;
    // The instance echoes ids from its first answer on.
    let mut first = client(addr).await;
    let got = ask(&mut first, "GET", "/ok", "warm-up", &[], "").await;
    tally.check("warm-up", &got, true);

    let attacker = {
        let tally = tally.clone();
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                // Each on a connection of its own: the proxy may close the client's after a
                // misframed answer, and the point is what happens to the others.
                for (method, path, what, smuggles) in MISFRAMED {
                    let id = format!("bad-{round}-{what}");
                    let body = match smuggles {
                        false => String::new(),
                        true => format!(
                            "GET /ok HTTP/1.1\r\nhost: x\r\nx-request-id: smuggled-{round}-{what}\r\n\r\n"
                        ),
                    };
                    let extra: &[(&str, &str)] = match method {
                        "POST" => &[("expect", "100-continue")],
                        _ => &[],
                    };
                    let mut conn = client(addr).await;
                    let got = ask(&mut conn, method, path, &id, extra, &body).await;
                    tally.check(&id, &got, false);
                }
            }
        })
    };
    let innocents: Vec<_> = (0..INNOCENT)
        .map(|c| {
            let tally = tally.clone();
            tokio::spawn(async move {
                let mut conn = client(addr).await;
                for n in 0..ROUNDS * 25 {
                    let id = format!("c{c}-{n}");
                    let got = ask(&mut conn, "GET", "/ok", &id, &[], "").await;
                    tally.check(&id, &got, true);
                    if got.is_none() {
                        conn = client(addr).await;
                    }
                }
            })
        })
        .collect();
    attacker.await.unwrap();
    for innocent in innocents {
        innocent.await.unwrap();
    }
    let (answered, wrong, failed) = (
        tally.answered.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    assert_eq!(
        wrong, 0,
        "answers delivered to the wrong request ({answered} right)"
    );
    assert_eq!(failed, 0, "innocent requests failed ({answered} right)");
    assert!(
        answered >= (INNOCENT * ROUNDS * 25) as u64,
        "{answered} answered"
    );
}
