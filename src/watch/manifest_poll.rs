//! Conditional fetches of a watched manifest URL: `If-None-Match`/`If-Modified-Since` over
//! http(s), `IfNoneMatch` on S3's GetObject.
//!
//! The body comes back with its validator in one request, so what gets deployed is exactly the
//! version whose ETag was recorded (a HEAD then a GET could see two different objects).

use http::StatusCode;

/// What a poll found.
#[derive(Debug)]
pub enum Polled {
    NotModified,
    Changed {
        body: Vec<u8>,
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

/// Why a poll failed; the next poll tries again.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("cannot fetch manifest {url}: {message}; check the URL and the network")]
    Fetch { url: String, message: String },
    #[error("manifest {url} answered {status}; check that the URL points at the manifest")]
    Status { url: String, status: StatusCode },
    #[error("manifest {url} is bigger than {limit} bytes; a manifest is a small YAML file")]
    TooLarge { url: String, limit: usize },
}

/// A manifest is a few kilobytes; this bounds the memory a wrong URL can take.
const LIMIT: usize = 1 << 20;

/// The polling client, reused across polls (connection pooling, one S3 client).
#[derive(Debug, Clone)]
pub struct ManifestPoller {
    http: reqwest::Client,
    s3: std::sync::Arc<tokio::sync::OnceCell<aws_sdk_s3::Client>>,
}

impl Default for ManifestPoller {
    fn default() -> Self {
        ManifestPoller::new()
    }
}

impl ManifestPoller {
    pub fn new() -> ManifestPoller {
        let http = super::http_client::build();
        ManifestPoller {
            http,
            s3: Default::default(),
        }
    }

    /// Fetches `url` unless it still matches `etag`/`last_modified`.
    pub async fn poll(
        &self,
        url: &str,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> Result<Polled, PollError> {
        match url.strip_prefix("s3://") {
            Some(rest) => self.poll_s3(url, rest, etag).await,
            None => self.poll_http(url, etag, last_modified).await,
        }
    }

    async fn poll_http(
        &self,
        url: &str,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> Result<Polled, PollError> {
        let fetch_err = |e: reqwest::Error| PollError::Fetch {
            url: url.to_owned(),
            message: e.to_string(),
        };
        let mut req = self.http.get(url);
        if let Some(etag) = etag {
            req = req.header("If-None-Match", etag);
        }
        if let Some(lm) = last_modified {
            req = req.header("If-Modified-Since", lm);
        }
        let resp = req.send().await.map_err(fetch_err)?;
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Polled::NotModified);
        }
        if !status.is_success() {
            return Err(PollError::Status {
                url: url.to_owned(),
                status,
            });
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (new_etag, new_lm) = (header("etag"), header("last-modified"));
        if resp.content_length().is_some_and(|n| n as usize > LIMIT) {
            return Err(PollError::TooLarge {
                url: url.to_owned(),
                limit: LIMIT,
            });
        }
        let body = resp.bytes().await.map_err(fetch_err)?;
        if body.len() > LIMIT {
            return Err(PollError::TooLarge {
                url: url.to_owned(),
                limit: LIMIT,
            });
        }
        Ok(Polled::Changed {
            body: body.to_vec(),
            etag: new_etag,
            last_modified: new_lm,
        })
    }

    async fn poll_s3(
        &self,
        url: &str,
        rest: &str,
        etag: Option<&str>,
    ) -> Result<Polled, PollError> {
        let fail = |message: String| PollError::Fetch {
            url: url.to_owned(),
            message,
        };
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| fail("expected s3://BUCKET/KEY".into()))?;
        // The agent's client: the same credentials chain, region default and endpoint handling as
        // the fetch that `cutover apply` will make.
        let client = self
            .s3
            .get_or_init(|| crate::agent::source::s3::client(None))
            .await;
        let mut req = client.get_object().bucket(bucket).key(key);
        if let Some(etag) = etag {
            req = req.if_none_match(etag);
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(err) => {
                // S3 answers a matching If-None-Match with a bare 304, which the SDK reports
                // as an unmodeled service error: read the raw status.
                if err.raw_response().map(|r| r.status().as_u16()) == Some(304) {
                    return Ok(Polled::NotModified);
                }
                let detail = aws_sdk_s3::error::DisplayErrorContext(&err).to_string();
                return Err(fail(detail));
            }
        };
        if out.content_length().is_some_and(|n| n as usize > LIMIT) {
            return Err(PollError::TooLarge {
                url: url.to_owned(),
                limit: LIMIT,
            });
        }
        let new_etag = out.e_tag().map(str::to_owned);
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_vec();
        Ok(Polled::Changed {
            body,
            etag: new_etag,
            last_modified: None,
        })
    }
}
