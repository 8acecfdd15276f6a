//! The one way tests send an HTTP/1.1 request: a [`Request`] (method, path, headers, body) sent on
//! a fresh connection to an address ([`Request::send`]) or on a keep-alive client connection
//! ([`Request::send_on`]), answered by an [`Answer`] (status, headers, body); and raw exchanges,
//! for the bytes no well-behaved client would send.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `Host` a request carries unless it names another.
const HOST: &str = "shop.example";

/// A keep-alive HTTP/1.1 client connection, for tests that send requests one by one.
pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Opens a client connection to `addr` (a proxy under test) and drives it in the background.
pub async fn connect(addr: SocketAddr) -> Sender {
    try_connect(addr).await.expect("a connection to the proxy")
}

/// [`connect`], with the failure (connect, handshake) as an error.
pub async fn try_connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One request; `GET path` with `Host: shop.example` unless told otherwise.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// How long [`Request::send`] waits for the whole answer.
    timeout: Duration,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Names in lower case, in the order they came.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn headers(self, headers: &[(&str, &str)]) -> Request {
        headers
            .iter()
            .fold(self, |request, (name, value)| request.header(name, value))
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = timeout;
        self
    }

    fn names(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Sends the request on a new connection to `addr`, asking the server to close it after
    /// the answer; an error says which step failed (connect, write, read) or what came instead.
    pub fn send(&self, addr: SocketAddr) -> Result<Answer, String> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if !self.names("host") {
            head.push_str(&format!("Host: {HOST}\r\n"));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.body.is_empty() && !self.names("content-length") {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        let raw = exchange(addr, &bytes, self.timeout)?;
        Answer::parse(&raw)
    }

    /// Sends the request on `sender`'s keep-alive connection; panics if it fails.
    pub async fn send_on(&self, sender: &mut Sender) -> Answer {
        self.try_send_on(sender).await.expect("an answer")
    }

    /// [`Request::send_on`], with the failure as an error.
    pub async fn try_send_on(&self, sender: &mut Sender) -> Result<Answer, String> {
        sender.ready().await.map_err(|e| format!("ready: {e}"))?;
        let mut request = http::Request::builder()
            .method(self.method.as_str())
            .uri(self.path.as_str());
        if !self.names("host") {
            request = request.header("host", HOST);
        }
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request
            .body(Full::new(Bytes::from(self.body.clone())))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into(),
                )
            })
            .collect();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// `GET path` on a new connection to `addr`.
pub fn get(addr: SocketAddr, path: &str) -> Result<Answer, String> {
    Request::get(path).send(addr)
}

impl Answer {
    /// Reads an answer the server ended by closing the connection (a body by length, chunked,
    /// or up to the close).
    pub fn parse(raw: &str) -> Result<Answer, String> {
        let (head, rest) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no whole answer: {raw:?}"))?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|line| line.strip_prefix("HTTP/1."))
            .and_then(|line| line.get(2..5))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {raw:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut answer = Answer {
            status,
            headers,
            body: rest.to_owned(),
        };
        if answer
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            answer.body = dechunk(rest).ok_or_else(|| format!("a broken chunked body: {raw:?}"))?;
        }
        Ok(answer)
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The version that answered, from the demo app's `hello from VERSION (pid …)`.
    pub fn version(&self) -> Option<&str> {
        self.body
            .strip_prefix("hello from ")
            .and_then(|rest| rest.split_whitespace().next())
    }
}

/// The data of a chunked body, trailer fields left out.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

/// Sends `bytes` as they are on a new connection to `addr` and returns everything that comes back
/// until the peer closes it; an error if the connection could not be made or written to, or if
/// the read failed or took longer than `timeout` (with what had come by then).
pub fn exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Result<String, String> {
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream.write_all(bytes).map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    match read {
        Ok(_) => Ok(answer),
        Err(e) => Err(format!("read: {e}, after {answer:?}")),
    }
}

/// [`exchange`] for async tests: the proxy must end the exchange within 10 s.
pub async fn exchange_async(addr: SocketAddr, bytes: impl AsRef<[u8]>) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    stream
        .write_all(bytes.as_ref())
        .await
        .expect("write the request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the proxy ended the exchange within 10s")
        .expect("read the answer");
    String::from_utf8_lossy(&answer).into_owned()
}
