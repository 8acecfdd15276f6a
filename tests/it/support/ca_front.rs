//! A front for Pebble with what Pebble 2.4 lacks, so the supervisor's handling of renewal
//! information (ARI, RFC 9773) and of rate limits meets a real CA otherwise. It passes every
//! request on to Pebble unchanged, `Host` included, so Pebble names its URLs after the front
//! and the JWS `url` of each request matches; it adds `renewalInfo` to the directory and answers
//! it (a window 30 days ahead; the first certificate asked about due at once, if the test asks),
//! echoing an order's `replaces` as an ARI CA does; and it can refuse new orders with `429` and
//! a `Retry-After`, as Let's Encrypt does. It records each new
//! order's time and payload. HTTPS by a test CA of its own (`ca`); stopped on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::free_port;
use super::pebble::Pebble;
use super::tls::TestCa;

pub struct CaFront {
    /// The ACME directory URL, through the front.
    pub directory: String,
    /// The CA the front's HTTPS is signed by (what `tls.acme.ca` names).
    pub ca: PathBuf,
    shared: Arc<Mutex<Shared>>,
    /// Whether challenge announcements wait.
    hold: tokio::sync::watch::Sender<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// A new order as it reached the front.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub at: Instant,
    /// The JWS payload, decoded.
    pub payload: serde_json::Value,
    /// Whether the front refused it (429).
    pub refused: bool,
}

#[derive(Debug, Default)]
struct Shared {
    /// New orders still to refuse, and the Retry-After to send, in seconds.
    refuse: u32,
    retry_after: u64,
    orders: Vec<NewOrder>,
    /// Certificate ids asked about, in order.
    asked: Vec<String>,
    /// Whether the first certificate asked about is due at once.
    first_due: bool,
    /// Challenge announcements waiting for [`CaFront::release`].
    held: usize,
}

impl CaFront {
    /// A front for `pebble` on a free port of 127.0.0.1.
    pub fn start(pebble: &Pebble) -> CaFront {
        let dir = tempfile::tempdir().expect("temp dir for the CA front");
        let ca = TestCa::new(&dir.path().join("ca"));
        let leaf = ca.issue("front", &["localhost"]);
        let chain = CertificateDer::pem_file_iter(&leaf.cert)
            .expect("the front's certificate")
            .collect::<Result<Vec<_>, _>>()
            .expect("PEM");
        let key = PrivateKeyDer::from_pem_file(&leaf.key).expect("the front's key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the front's TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let port = free_port();
        // `https://localhost:PORT/dir`
        let pebble_url: http::Uri = pebble.directory.parse().expect("pebble's URL");
        let pebble_addr =
            SocketAddr::from(([127, 0, 0, 1], pebble_url.port_u16().expect("a port")));
        let upstream = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&pebble.api_ca).expect("CA"))
                    .expect("PEM"),
            )
            .resolve("localhost", pebble_addr)
            .http1_only()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a client for pebble");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let hold = tokio::sync::watch::Sender::new(false);
        let front = Front {
            port,
            pebble_port: pebble_addr.port(),
            upstream,
            shared: shared.clone(),
            hold: hold.subscribe(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the CA front");
        listener.set_nonblocking(true).expect("nonblocking");
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(front.serve(listener, acceptor, stopped));
        });
        CaFront {
            directory: format!("https://localhost:{port}{}", pebble_url.path()),
            ca: ca.cert.clone(),
            shared,
            hold,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Refuses the next `count` new orders with 429 and `Retry-After: seconds`.
    pub fn refuse_orders(&self, count: u32, seconds: u64) {
        let mut shared = self.shared.lock().unwrap();
        shared.refuse = count;
        shared.retry_after = seconds;
    }

    /// Holds every challenge announcement (the client's "ready") until [`CaFront::release`]: the
    /// CA does not look, and the order stays open.
    pub fn hold_challenges(&self) {
        self.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.hold.send_replace(false);
    }

    /// How many challenge announcements are waiting.
    pub fn held(&self) -> usize {
        self.shared.lock().unwrap().held
    }

    /// Makes the first certificate asked about due at once (a CA that wants it replaced).
    pub fn first_due_at_once(&self) {
        self.shared.lock().unwrap().first_due = true;
    }

    pub fn orders(&self) -> Vec<NewOrder> {
        self.shared.lock().unwrap().orders.clone()
    }

    /// The certificate ids the supervisor asked about, in order.
    pub fn asked(&self) -> Vec<String> {
        self.shared.lock().unwrap().asked.clone()
    }
}

impl Drop for CaFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Clone)]
struct Front {
    port: u16,
    pebble_port: u16,
    upstream: reqwest::Client,
    shared: Arc<Mutex<Shared>>,
    hold: tokio::sync::watch::Receiver<bool>,
}

type Answer = Response<Full<Bytes>>;

impl Front {
    async fn serve(
        self,
        listener: std::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        mut stopped: tokio::sync::oneshot::Receiver<()>,
    ) {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        loop {
            let stream = tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let (front, acceptor) = (self.clone(), acceptor.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let front = front.clone();
                    async move { Ok::<_, std::convert::Infallible>(front.answer(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    }

    async fn answer(&self, req: Request<Incoming>) -> Answer {
        let (head, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let path = head.uri.path().to_owned();
        if let Some(id) = path.strip_prefix("/renewal-info/") {
            return self.renewal_info(id);
        }
        if path.starts_with("/chalZ/") && *self.hold.borrow() {
            self.shared.lock().unwrap().held += 1;
            let _ = self.hold.clone().wait_for(|hold| !*hold).await;
            self.shared.lock().unwrap().held -= 1;
        }
        let mut replaces = None;
        if path == "/order-plz" {
            match self.new_order(&body) {
                Ok(named) => replaces = named,
                Err(refusal) => return *refusal,
            }
        }
        let mut answer = self.pass_on(&head, body).await;
        if let Some(replaces) = replaces.filter(|_| answer.status() == StatusCode::CREATED) {
            let bytes = answer.body().clone().collect().await.unwrap().to_bytes();
            let mut order: serde_json::Value =
                serde_json::from_slice(&bytes).expect("pebble's order");
            order["replaces"] = replaces;
            answer.headers_mut().remove(http::header::CONTENT_LENGTH);
            *answer.body_mut() = Full::new(Bytes::from(order.to_string()));
        }
        if path == "/dir" && answer.status() == StatusCode::OK {
            let bytes = answer.body().clone().collect().await.unwrap().to_bytes();
            let mut directory: serde_json::Value =
                serde_json::from_slice(&bytes).expect("pebble's directory");
            directory["renewalInfo"] =
                format!("https://localhost:{}/renewal-info", self.port).into();
            answer.headers_mut().remove(http::header::CONTENT_LENGTH);
            *answer.body_mut() = Full::new(Bytes::from(directory.to_string()));
        }
        answer
    }

    /// Records a new order: the refusal, if one is owed, else the certificate it replaces.
    fn new_order(&self, body: &[u8]) -> Result<Option<serde_json::Value>, Box<Answer>> {
        let jws: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let payload: serde_json::Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jws["payload"].as_str().unwrap_or_default())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let replaces = payload.get("replaces").cloned();
        let mut shared = self.shared.lock().unwrap();
        let refused = shared.refuse > 0;
        shared.orders.push(NewOrder {
            at: Instant::now(),
            payload,
            refused,
        });
        if !refused {
            return Ok(replaces);
        }
        shared.refuse -= 1;
        let problem = serde_json::json!({
            "type": "urn:ietf:params:acme:error:rateLimited",
            "detail": "too many new orders recently",
            "status": 429,
        });
        Err(Box::new(
            Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("content-type", "application/problem+json")
                .header("retry-after", shared.retry_after.to_string())
                .body(Full::new(Bytes::from(problem.to_string())))
                .expect("a response"),
        ))
    }

    /// A window 30 days ahead, or one already open for the first certificate asked about.
    fn renewal_info(&self, id: &str) -> Answer {
        let mut shared = self.shared.lock().unwrap();
        shared.asked.push(id.to_owned());
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        let (start, end) = if shared.first_due && shared.asked[0] == id {
            (now - day, now - day / 2)
        } else {
            (now + 30 * day, now + 31 * day)
        };
        let window = serde_json::json!({ "suggestedWindow": {
            "start": humantime::format_rfc3339_seconds(start).to_string(),
            "end": humantime::format_rfc3339_seconds(end).to_string(),
        }});
        Response::builder()
            .header("content-type", "application/json")
            .header("retry-after", "21600")
            .body(Full::new(Bytes::from(window.to_string())))
            .expect("a response")
    }

    /// The request as Pebble answers it; `Host` stays the front's.
    async fn pass_on(&self, head: &http::request::Parts, body: Bytes) -> Answer {
        let url = format!(
            "https://localhost:{}{}",
            self.pebble_port,
            head.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut request = self.upstream.request(head.method.clone(), url).body(body);
        for (name, value) in &head.headers {
            request = request.header(name, value);
        }
        let answer = match request.send().await {
            Ok(answer) => answer,
            Err(e) => {
                return Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(Full::new(Bytes::from(format!("pebble: {e}"))))
                    .expect("a response")
            }
        };
        let mut response = Response::builder().status(answer.status());
        for (name, value) in answer.headers() {
            if name != http::header::TRANSFER_ENCODING && name != http::header::CONNECTION {
                response = response.header(name, value);
            }
        }
        let bytes = answer.bytes().await.unwrap_or_default();
        response.body(Full::new(bytes)).expect("a response")
    }
}
