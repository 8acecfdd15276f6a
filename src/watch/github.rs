//! A small GitHub REST client for what a watch needs: list a repository's releases with a
//! conditional request, and download a small asset (a checksums file).
//!
//! Idle polling must cost nothing: each list carries the last `ETag` in `If-None-Match`, and
//! GitHub does not count a 304 against the rate limit. Rate limits are obeyed, not fought: a 403
//! or 429 with `retry-after` or `x-ratelimit-remaining: 0` turns into a pause the caller honours.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode};
use serde::Deserialize;

/// One release, with only the fields a watch reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Release {
    pub tag_name: String,
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub prerelease: bool,
    #[serde(default)]
    pub assets: Vec<Asset>,
}

/// One release asset.
#[derive(Debug, Clone, Deserialize)]
pub struct Asset {
    pub id: u64,
    pub name: String,
    /// The API URL; with `Accept: application/octet-stream` it serves the bytes, private repos too.
    pub url: String,
    /// The public download URL, which the rendered manifest's `src` points at when the watcher
    /// has no token (with one, `src` is the API URL above, which private repositories need).
    pub browser_download_url: String,
    /// `sha256:HEX`, computed by GitHub on upload (absent on assets uploaded before June 2025).
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub size: u64,
}

/// An API token; its `Debug` never shows the value.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// The value itself, for the one place that must send it (a request header or a child's
    /// environment); never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `GH_TOKEN`, then `GITHUB_TOKEN` (the names `gh` itself reads), then `gh auth token` when the
    /// GitHub CLI is installed and logged in; none: anonymous (60 requests an hour).
    pub fn discover() -> Option<Token> {
        for var in ["GH_TOKEN", "GITHUB_TOKEN"] {
            if let Some(v) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) {
                return Some(Token(v.trim().to_owned()));
            }
        }
        let out = std::process::Command::new("gh")
            .args(["auth", "token"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        let token = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && !token.is_empty()).then_some(Token(token))
    }
}

/// What a releases request returned.
#[derive(Debug)]
pub enum Fetched {
    /// 304: nothing changed since the ETag we sent.
    NotModified,
    Releases {
        releases: Vec<Release>,
        etag: Option<String>,
        /// The budget is spent (`x-ratelimit-remaining: 0`): make no request before this time.
        pause_until: Option<SystemTime>,
    },
}

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("GitHub request {url} failed: {source}; check the network and api_url")]
    Http { url: String, source: reqwest::Error },
    #[error("GitHub rate limit on {url}: {why}; pausing until {}", humantime::format_rfc3339_seconds(*.until))]
    RateLimited {
        url: String,
        until: SystemTime,
        why: String,
    },
    #[error(
        "GitHub answered {status} to {url}: {body}; check the repo name and the token's access"
    )]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("GitHub response from {url} is not a releases list: {source}")]
    Decode {
        url: String,
        source: serde_json::Error,
    },
    #[error("asset {url} is {size} bytes, more than the {limit} a checksums file may have")]
    TooLarge {
        url: String,
        size: usize,
        limit: usize,
    },
}

/// The client; cheap to clone, one per watcher process.
#[derive(Debug, Clone)]
pub struct GithubClient {
    http: reqwest::Client,
    token: Option<Token>,
}

/// The pause GitHub asks for after a secondary rate limit without `retry-after`: "wait at
/// least one minute" (docs: rate limits for the REST API).
const SECONDARY_LIMIT_PAUSE: Duration = Duration::from_secs(60);

impl GithubClient {
    pub fn new(token: Option<Token>) -> GithubClient {
        let http = super::http_client::build();
        GithubClient { http, token }
    }

    /// The API token, if there is one.
    pub fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    fn get(&self, url: &str, accept: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .get(url)
            .header("Accept", accept)
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(Token(t)) = &self.token {
            req = req.bearer_auth(t);
        }
        req
    }

    /// Lists the newest 100 releases of `repo`; with `etag`, a 304 comes back as `NotModified`.
    pub async fn releases(
        &self,
        api_url: &str,
        repo: &str,
        etag: Option<&str>,
    ) -> Result<Fetched, GithubError> {
        let url = format!(
            "{}/repos/{repo}/releases?per_page=100",
            api_url.trim_end_matches('/')
        );
        let mut req = self.get(&url, "application/vnd.github+json");
        if let Some(etag) = etag {
            req = req.header("If-None-Match", etag);
        }
        let resp = req.send().await.map_err(|source| GithubError::Http {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|source| GithubError::Http {
            url: url.clone(),
            source,
        })?;
        check_status(&url, status, &headers, &body)?;
        let releases = serde_json::from_slice(&body).map_err(|source| GithubError::Decode {
            url: url.clone(),
            source,
        })?;
        let spent = header(&headers, "x-ratelimit-remaining").is_some_and(|v| v == "0");
        Ok(Fetched::Releases {
            releases,
            etag: header(&headers, "etag").map(str::to_owned),
            pause_until: spent.then(|| reset_time(&headers)).flatten(),
        })
    }

    /// Downloads a small asset (a checksums file) through the API, which works for private
    /// repositories too; reqwest drops the token when GitHub redirects to its storage host.
    pub async fn download_small(
        &self,
        asset: &Asset,
        limit: usize,
    ) -> Result<Vec<u8>, GithubError> {
        let url = asset.url.clone();
        if asset.size as usize > limit {
            return Err(GithubError::TooLarge {
                url,
                size: asset.size as usize,
                limit,
            });
        }
        let resp = self
            .get(&url, "application/octet-stream")
            .send()
            .await
            .map_err(|source| GithubError::Http {
                url: url.clone(),
                source,
            })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|source| GithubError::Http {
            url: url.clone(),
            source,
        })?;
        check_status(&url, status, &headers, &body)?;
        if body.len() > limit {
            return Err(GithubError::TooLarge {
                url,
                size: body.len(),
                limit,
            });
        }
        Ok(body.to_vec())
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `x-ratelimit-reset` is in UTC epoch seconds; one extra second absorbs clock skew.
fn reset_time(headers: &HeaderMap) -> Option<SystemTime> {
    let secs: u64 = header(headers, "x-ratelimit-reset")?.trim().parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs + 1))
}

/// Maps a non-2xx answer to an error, telling a rate limit (pause) from a real refusal.
fn check_status(
    url: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), GithubError> {
    if status.is_success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)])
        .replace('\n', " ")
        .trim()
        .to_owned();
    if status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS {
        let now = SystemTime::now();
        let retry_after = header(headers, "retry-after").and_then(|v| v.trim().parse::<u64>().ok());
        let spent = header(headers, "x-ratelimit-remaining").is_some_and(|v| v == "0");
        let limited = if let Some(secs) = retry_after {
            Some((
                now + Duration::from_secs(secs),
                format!("retry-after {secs}s"),
            ))
        } else if spent {
            let until = reset_time(headers).unwrap_or(now + SECONDARY_LIMIT_PAUSE);
            Some((until, "x-ratelimit-remaining is 0".to_owned()))
        } else if status == StatusCode::TOO_MANY_REQUESTS
            || text.to_ascii_lowercase().contains("rate limit")
        {
            Some((
                now + SECONDARY_LIMIT_PAUSE,
                "secondary rate limit".to_owned(),
            ))
        } else {
            None
        };
        if let Some((until, why)) = limited {
            return Err(GithubError::RateLimited {
                url: url.to_owned(),
                until,
                why,
            });
        }
    }
    Err(GithubError::Status {
        url: url.to_owned(),
        status,
        body: text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_spent_budget_pauses_until_the_reset_time() {
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "2000000000"),
        ]);
        match check_status("u", StatusCode::FORBIDDEN, &h, b"API rate limit exceeded") {
            Err(GithubError::RateLimited { until, .. }) => {
                assert_eq!(until, UNIX_EPOCH + Duration::from_secs(2_000_000_001))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_wins_and_a_plain_403_is_a_refusal() {
        let h = headers(&[("retry-after", "30"), ("x-ratelimit-remaining", "10")]);
        let before = SystemTime::now();
        match check_status("u", StatusCode::TOO_MANY_REQUESTS, &h, b"") {
            Err(GithubError::RateLimited { until, .. }) => {
                assert!(until >= before + Duration::from_secs(30))
            }
            other => panic!("{other:?}"),
        }
        let h = headers(&[("x-ratelimit-remaining", "10")]);
        let err = check_status("u", StatusCode::FORBIDDEN, &h, b"Resource not accessible");
        assert!(matches!(err, Err(GithubError::Status { .. })), "{err:?}");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let client = GithubClient::new(Some(Token("ghp_secret".into())));
        assert!(!format!("{client:?}").contains("ghp_secret"));
    }
}
