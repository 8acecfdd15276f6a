//! The GitHub webhook endpoint: a `release` event (published or released) makes the watch of
//! that repository check at once instead of at its next poll.
//!
//! The `X-Hub-Signature-256` HMAC of the raw body is checked in constant time before anything in
//! the body is believed; a bad one gets 401 and a log line. Deliveries are deduplicated by their
//! `X-GitHub-Delivery` id (GitHub redelivers on timeouts and on request). A webhook only triggers
//! a check, never a deploy by itself, so even a replayed or forged event cannot pick a release:
//! the API's answer and the watch's rules still decide.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// GitHub caps payloads at 25 MB; release payloads are a few KB, so a smaller cap costs nothing.
const BODY_LIMIT: usize = 5 << 20;
/// How many delivery ids are remembered for deduplication.
const REMEMBERED: usize = 4096;

/// The shared secret; its `Debug` never shows it.
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(value: impl Into<Vec<u8>>) -> Secret {
        Secret(value.into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The endpoint's state: the secret, which watch to wake per repository, and recent deliveries.
#[derive(Debug)]
pub struct Webhook {
    secret: Secret,
    /// Lowercased `owner/repo` → the wake-ups of its watches.
    repos: HashMap<String, Vec<Arc<Notify>>>,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// Records `id`; false when it was already there.
    fn insert(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }
}

#[derive(Debug, Deserialize)]
struct ReleaseEvent {
    action: String,
    repository: Repository,
    #[serde(default)]
    release: Option<EventRelease>,
}

#[derive(Debug, Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Debug, Deserialize)]
struct EventRelease {
    tag_name: String,
}

impl Webhook {
    pub fn new(secret: Secret, repos: HashMap<String, Vec<Arc<Notify>>>) -> Webhook {
        let repos = repos
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        Webhook {
            secret,
            repos,
            seen: Mutex::default(),
        }
    }

    /// Handles one request; every answer is a short plain-text line.
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        if req.method() != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "POST GitHub webhooks here");
        }
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (signature, event, delivery) = (
            header("x-hub-signature-256"),
            header("x-github-event"),
            header("x-github-delivery"),
        );
        let body = match Limited::new(req.into_body(), BODY_LIMIT).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "payload too large or broken"),
        };
        if !verify(&self.secret, &body, &signature) {
            tracing::warn!(
                "webhook from {peer}: bad or missing X-Hub-Signature-256 (delivery {delivery:?}); refused with 401"
            );
            return reply(StatusCode::UNAUTHORIZED, "bad signature");
        }
        // Only authenticated ids are remembered, so a forger cannot pre-empt real deliveries.
        if !delivery.is_empty() && !lock(&self.seen).insert(&delivery) {
            tracing::info!("webhook delivery {delivery} already handled; ignored");
            return reply(StatusCode::OK, "duplicate delivery ignored");
        }
        match event.as_str() {
            "ping" => reply(StatusCode::OK, "pong"),
            "release" => self.on_release(&body, &delivery),
            other => reply(StatusCode::OK, &format!("event {other:?} ignored")),
        }
    }

    fn on_release(&self, body: &[u8], delivery: &str) -> Response<Full<Bytes>> {
        let event: ReleaseEvent = match serde_json::from_slice(body) {
            Ok(e) => e,
            Err(e) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    &format!("not a release event: {e}"),
                )
            }
        };
        if !matches!(event.action.as_str(), "published" | "released") {
            return reply(
                StatusCode::OK,
                &format!("action {:?} ignored", event.action),
            );
        }
        let repo = event.repository.full_name;
        let Some(watches) = self.repos.get(&repo.to_ascii_lowercase()) else {
            return reply(StatusCode::OK, &format!("no watch for {repo}; ignored"));
        };
        let tag = event.release.map(|r| r.tag_name).unwrap_or_default();
        tracing::info!(
            "webhook delivery {delivery}: release {tag} {} on {repo}; checking now",
            event.action
        );
        for notify in watches {
            notify.notify_one();
        }
        reply(StatusCode::ACCEPTED, &format!("checking {repo}"))
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    // A panic while holding this lock leaves a plain set behind: still usable.
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

fn reply(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *resp.status_mut() = status;
    resp
}

/// Checks `sha256=HEX` against the HMAC-SHA256 of `body`, in constant time.
pub fn verify(secret: &Secret, body: &[u8], header: &str) -> bool {
    let Some(given) = header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h.trim()).ok())
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&secret.0) else {
        return false;
    };
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    given.len() == expected.len() && bool::from(expected.as_slice().ct_eq(&given))
}

/// Serves the endpoint on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, hook: Arc<Webhook>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Usually EMFILE: back off a little instead of spinning.
                tracing::warn!("webhook accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let hook = hook.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let hook = hook.clone();
                async move { Ok::<_, Infallible>(hook.handle(req, peer).await) }
            });
            // The header timeout needs a timer; without one hyper refuses the connection.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("webhook connection from {peer}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_githubs_documented_example() {
        // From GitHub's "Validating webhook deliveries" page: secret "It's a Secret to Everybody",
        // payload "Hello, World!".
        let secret = Secret::new("It's a Secret to Everybody");
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify(&secret, b"Hello, World!", good));
        assert!(!verify(&secret, b"Hello, World?", good));
        assert!(!verify(&secret, b"Hello, World!", "sha256=00"));
        assert!(!verify(&secret, b"Hello, World!", ""));
        assert!(!verify(&Secret::new("other"), b"Hello, World!", good));
    }

    #[test]
    fn deliveries_are_remembered_boundedly() {
        let mut seen = Seen::default();
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        for i in 0..REMEMBERED {
            seen.insert(&i.to_string());
        }
        assert!(seen.insert("a"), "the oldest id was forgotten");
        assert_eq!(seen.order.len(), REMEMBERED);
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        assert!(!format!("{:?}", Secret::new("hunter2")).contains("hunter2"));
    }
}
