//! A fake GitHub on 127.0.0.1: the releases API (shaped from GitHub's documented example in
//! fixtures/github/releases.json, with ETags and 304s), asset downloads, rate-limit answers, and
//! plain manifest files with ETag/Last-Modified for manifest watches.
//!
//! It records every request so tests can assert what was asked (If-None-Match carried, nothing
//! fetched during a rate-limit pause or before a `retry-after` ran out, assets downloaded how
//! often). Stopped on drop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One asset of a fake release.
#[derive(Debug, Clone)]
pub struct AssetSpec {
    pub name: String,
    pub body: Vec<u8>,
    /// Whether the API lists GitHub's `digest` for it (assets uploaded before mid-2025 lack it).
    pub digest: bool,
    /// A sha256 the API lists instead of the body's own (a corrupted upload).
    pub claimed_sha256: Option<String>,
}

impl AssetSpec {
    pub fn new(name: &str, body: &[u8]) -> AssetSpec {
        AssetSpec {
            name: name.into(),
            body: body.to_vec(),
            digest: true,
            claimed_sha256: None,
        }
    }

    /// The API lists `sha256` as its digest, whatever the body is.
    pub fn claiming(mut self, sha256: &str) -> AssetSpec {
        self.claimed_sha256 = Some(sha256.to_owned());
        self
    }

    pub fn without_digest(mut self) -> AssetSpec {
        self.digest = false;
        self
    }

    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.body))
    }
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub status: u16,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    pub accept: Option<String>,
    pub authorization: Option<String>,
    pub at: SystemTime,
    /// When the fake read it, on the monotonic clock (to compare with a `retry-after` it sent).
    pub instant: Instant,
}

#[derive(Default)]
struct Inner {
    /// (tag, prerelease, assets) in publication order.
    releases: Vec<(String, bool, Vec<AssetSpec>)>,
    /// Answer 403 with a spent budget until this time.
    limited_until: Option<SystemTime>,
    /// Answer this many releases lists with 429 and `retry-after: SECS`.
    retry_after: Option<(usize, u64)>,
    /// Manifest files by name: body and a version counter for ETag/Last-Modified.
    manifests: HashMap<String, (Vec<u8>, u64)>,
    seen: Vec<Seen>,
}

pub struct FakeGithub {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeGithub {
    pub fn start() -> FakeGithub {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let inner = Arc::new(Mutex::new(Inner::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = inner.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake github runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let shared = shared.clone();
                                async move { Ok::<_, Infallible>(handle(&shared, addr, req)) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        FakeGithub {
            addr,
            inner,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The API base URL, for a watch's `api_url`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake github lock")
    }

    /// Publishes a release of `octo/shop` (the repo every test uses).
    pub fn publish(&self, tag: &str, prerelease: bool, assets: Vec<AssetSpec>) {
        self.lock().releases.push((tag.into(), prerelease, assets));
    }

    /// Answers every API call with 403 and `x-ratelimit-remaining: 0` until `reset`.
    pub fn rate_limit_until(&self, reset: SystemTime) {
        self.lock().limited_until = Some(reset);
    }

    /// Answers the next `times` releases lists with 429 and `retry-after: secs` (GitHub's
    /// secondary rate limit), then normally again.
    pub fn retry_after(&self, times: usize, secs: u64) {
        self.lock().retry_after = Some((times, secs));
    }

    /// Serves (or replaces) a manifest file at `manifest_url(name)`.
    pub fn set_manifest(&self, name: &str, body: &str) {
        let mut inner = self.lock();
        let version = inner.manifests.get(name).map_or(1, |(_, v)| v + 1);
        inner
            .manifests
            .insert(name.into(), (body.as_bytes().to_vec(), version));
    }

    pub fn manifest_url(&self, name: &str) -> String {
        format!("http://{}/manifests/{name}", self.addr)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn seen_under(&self, prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.starts_with(prefix))
            .collect()
    }

    /// Releases-list requests.
    pub fn release_lists(&self) -> Vec<Seen> {
        self.seen_under("/repos/octo/shop/releases?")
    }

    /// Downloads of asset bytes (through the API or the browser URL).
    pub fn asset_downloads(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| {
                s.status == 200
                    && (s.path.contains("/releases/download/")
                        || s.path.contains("/releases/assets/"))
            })
            .count()
    }
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn handle(
    shared: &Mutex<Inner>,
    addr: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let mut inner = shared.lock().expect("fake github lock");
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let mut seen = Seen {
        path: path.clone(),
        status: 0,
        if_none_match: header("if-none-match"),
        if_modified_since: header("if-modified-since"),
        accept: header("accept"),
        authorization: header("authorization"),
        at: SystemTime::now(),
        instant: Instant::now(),
    };
    let resp = match inner.retry_after {
        Some((times, secs)) if times > 0 && path.starts_with("/repos/octo/shop/releases?") => {
            inner.retry_after = Some((times - 1, secs));
            respond(
                StatusCode::TOO_MANY_REQUESTS,
                vec![("retry-after", secs.to_string())],
                "{\"message\":\"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.\"}",
            )
        }
        _ => route(&inner, addr, &path, &seen),
    };
    seen.status = resp.status().as_u16();
    inner.seen.push(seen);
    resp
}

fn route(inner: &Inner, addr: SocketAddr, path: &str, seen: &Seen) -> Response<Full<Bytes>> {
    if let Some(name) = path.strip_prefix("/manifests/") {
        let Some((body, version)) = inner.manifests.get(name) else {
            return respond(StatusCode::NOT_FOUND, vec![], "{\"message\":\"Not Found\"}");
        };
        let etag = format!("\"m{version}\"");
        if seen.if_none_match.as_deref() == Some(etag.as_str()) {
            return respond(StatusCode::NOT_MODIFIED, vec![("etag", etag)], "");
        }
        let lm = humantime::format_rfc3339_seconds(
            UNIX_EPOCH + std::time::Duration::from_secs(*version),
        );
        return respond_bytes(
            StatusCode::OK,
            vec![("etag", etag), ("last-modified", lm.to_string())],
            body.clone(),
        );
    }
    if let Some(until) = inner.limited_until.filter(|u| *u > SystemTime::now()) {
        let reset = until
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        return respond(
            StatusCode::FORBIDDEN,
            vec![
                ("x-ratelimit-limit", "60".into()),
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", reset.to_string()),
            ],
            "{\"message\":\"API rate limit exceeded for 127.0.0.1.\",\"documentation_url\":\"https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting\"}",
        );
    }
    let base = format!("http://{addr}");
    if path.starts_with("/repos/octo/shop/releases?") {
        let body = releases_json(inner, &base);
        let etag = format!(
            "W/\"{}\"",
            &hex::encode(Sha256::digest(body.as_bytes()))[..16]
        );
        if seen.if_none_match.as_deref() == Some(etag.as_str()) {
            return respond(StatusCode::NOT_MODIFIED, vec![("etag", etag)], "");
        }
        return respond(
            StatusCode::OK,
            vec![("etag", etag), ("x-ratelimit-remaining", "59".into())],
            &body,
        );
    }
    // /repos/octo/shop/releases/assets/{id} (API, octet-stream) and /octo/shop/releases/download/{tag}/{name}.
    for (index, (tag, _, assets)) in inner.releases.iter().enumerate() {
        for (j, asset) in assets.iter().enumerate() {
            let api = format!("/repos/octo/shop/releases/assets/{}", asset_id(index, j));
            let browser = format!("/octo/shop/releases/download/{tag}/{}", asset.name);
            let api_ok = path == api && seen.accept.as_deref() == Some("application/octet-stream");
            if api_ok || path == browser {
                return respond_bytes(StatusCode::OK, vec![], asset.body.clone());
            }
        }
    }
    respond(StatusCode::NOT_FOUND, vec![], "{\"message\":\"Not Found\"}")
}

fn asset_id(release: usize, asset: usize) -> u64 {
    (release as u64 + 1) * 100 + asset as u64
}

/// The releases list, newest first as GitHub sends it, each built from the documented example.
fn releases_json(inner: &Inner, base: &str) -> String {
    let example: Value =
        serde_json::from_str(include_str!("../../../fixtures/github/releases.json"))
            .expect("releases fixture is JSON");
    let release_example = example[0].clone();
    let asset_example = release_example["assets"][0].clone();
    let mut out = Vec::new();
    for (index, (tag, prerelease, assets)) in inner.releases.iter().enumerate().rev() {
        let mut r = release_example.clone();
        let id = index as u64 + 1;
        r["id"] = id.into();
        r["tag_name"] = tag.as_str().into();
        r["name"] = tag.as_str().into();
        r["prerelease"] = (*prerelease).into();
        r["url"] = format!("{base}/repos/octo/shop/releases/{id}").into();
        r["html_url"] = format!("{base}/octo/shop/releases/{tag}").into();
        r["assets"] = assets
            .iter()
            .enumerate()
            .map(|(j, a)| {
                let mut v = asset_example.clone();
                v["id"] = asset_id(index, j).into();
                v["name"] = a.name.as_str().into();
                v["size"] = a.body.len().into();
                v["url"] = format!(
                    "{base}/repos/octo/shop/releases/assets/{}",
                    asset_id(index, j)
                )
                .into();
                v["browser_download_url"] =
                    format!("{base}/octo/shop/releases/download/{tag}/{}", a.name).into();
                v["digest"] = if a.digest {
                    let sha256 = a.claimed_sha256.clone().unwrap_or_else(|| a.sha256());
                    format!("sha256:{sha256}").into()
                } else {
                    Value::Null
                };
                v
            })
            .collect();
        out.push(r);
    }
    serde_json::to_string_pretty(&out).expect("serialize releases")
}

fn respond(status: StatusCode, headers: Vec<(&str, String)>, body: &str) -> Response<Full<Bytes>> {
    respond_bytes(status, headers, body.as_bytes().to_vec())
}

fn respond_bytes(
    status: StatusCode,
    headers: Vec<(&str, String)>,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(status);
    for (k, v) in headers {
        builder = builder.header(k, v);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}
