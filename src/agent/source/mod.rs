//! Where archives and manifests come from: `file://`, `http(s)://` and `s3://` URLs, opened as
//! byte streams with retry, an overall timeout and a bandwidth cap.
//!
//! A source is opened at a byte offset so that a transfer broken mid-stream can resume where it
//! stopped (HTTP `Range`, S3 ranged GET, a seek for files); [`Opened::resumed`] says whether the
//! origin honoured the offset, because a server may answer a ranged request with the whole body.
//!
//! `url` parses a URL into a `Source`; `file`, `http` and `s3` open one, each handing back an
//! `opened::Opened` stream or an `error::FetchError`; `options` says how to fetch and `throttle`
//! caps the bandwidth. This file is the face: the `Fetcher` over the three, the retry count
//! (`Attempts`) and `fetch_bytes` for a whole manifest.

mod error;
mod file;
mod http;
mod opened;
mod options;
pub mod s3;
pub mod throttle;
mod url;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::log::RunLog;
pub use error::FetchError;
pub use opened::{ByteStream, Opened};
pub use options::{FetchOptions, TokenFor};
pub use s3::S3Settings;
pub use url::Source;

/// The largest manifest [`fetch_bytes`] accepts; a manifest is a few hundred bytes of YAML.
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;

/// One URL with the clients it needs, reused across attempts.
#[derive(Debug)]
pub struct Fetcher {
    url: String,
    source: Source,
    http: Option<reqwest::Client>,
    s3: Option<aws_sdk_s3::Client>,
    s3_settings: Option<S3Settings>,
}

impl Fetcher {
    pub fn new(url: &str, opts: &FetchOptions) -> Result<Fetcher, FetchError> {
        let source = Source::parse(url)?;
        let http = match source {
            Source::Http(_) => Some(http::client(url, opts)?),
            _ => None,
        };
        Ok(Fetcher {
            url: url.to_owned(),
            source,
            http,
            s3: None,
            s3_settings: opts.s3.clone(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens the object at byte `offset` (0 for the whole object).
    pub async fn open(&mut self, offset: u64) -> Result<Opened, FetchError> {
        match &self.source {
            Source::File(path) => file::open(&self.url, path, offset).await,
            Source::Http(target) => {
                let client = self
                    .http
                    .as_ref()
                    .expect("HTTP sources get a client in Fetcher::new");
                http::open(client, &self.url, target, offset).await
            }
            Source::S3 { bucket, key } => {
                if self.s3.is_none() {
                    self.s3 = Some(s3::client(self.s3_settings.as_ref()).await);
                }
                let client = self.s3.as_ref().expect("the S3 client was just built");
                s3::open(client, &self.url, bucket, key, offset).await
            }
        }
    }
}

/// Counts attempts against `retries`, logs them and waits between them.
#[derive(Debug)]
pub struct Attempts<'a> {
    url: &'a str,
    opts: &'a FetchOptions,
    log: &'a RunLog,
    made: u32,
}

impl<'a> Attempts<'a> {
    pub fn new(url: &'a str, opts: &'a FetchOptions, log: &'a RunLog) -> Attempts<'a> {
        Attempts {
            url,
            opts,
            log,
            made: 0,
        }
    }

    /// Logs the start of the next attempt.
    pub fn begin(&mut self) {
        self.made += 1;
        if self.made == 1 {
            self.log.line(format!("fetching {}", self.url));
        } else {
            let total = self.opts.retries + 1;
            self.log.line(format!(
                "fetching {} (attempt {} of {total})",
                self.url, self.made
            ));
        }
    }

    /// After a failed attempt: `true` (having waited `retry_wait`) when another one is allowed.
    pub async fn retry_after(&mut self, err: &FetchError) -> bool {
        if !err.is_retryable() || self.made > self.opts.retries {
            return false;
        }
        self.log.line(format!(
            "{err}; retrying in {}",
            humantime::format_duration(self.opts.retry_wait)
        ));
        tokio::time::sleep(self.opts.retry_wait).await;
        true
    }
}

/// The instant the whole fetch must be done by, if there is a timeout.
pub fn deadline(opts: &FetchOptions) -> Option<Instant> {
    opts.timeout.map(|t| Instant::now() + t)
}

/// Runs `fut` until `deadline`; `None` when it passed first.
pub async fn until<F: std::future::Future>(deadline: Option<Instant>, fut: F) -> Option<F::Output> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// Fetches a small document (the manifest) whole, with the same retry and timeout as `src`.
pub async fn fetch_bytes(
    url: &str,
    opts: &FetchOptions,
    log: &RunLog,
) -> Result<Vec<u8>, FetchError> {
    let mut fetcher = Fetcher::new(url, opts)?;
    let timed_out = || FetchError::TimedOut {
        url: url.to_owned(),
        after: opts.timeout.unwrap_or_default(),
    };
    let work = async {
        let mut attempts = Attempts::new(url, opts, log);
        loop {
            attempts.begin();
            // A manifest is tiny: a broken transfer simply starts over rather than resuming.
            let err = match read_whole(&mut fetcher).await {
                Ok(body) => return Ok(body),
                Err(err) => err,
            };
            if !attempts.retry_after(&err).await {
                return Err(err);
            }
        }
    };
    until(deadline(opts), work)
        .await
        .unwrap_or_else(|| Err(timed_out()))
}

async fn read_whole(fetcher: &mut Fetcher) -> Result<Vec<u8>, FetchError> {
    let mut opened = fetcher.open(0).await?;
    let mut body = Vec::new();
    while let Some(chunk) = opened.stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchError::TooLarge {
                url: fetcher.url().to_owned(),
                limit: MAX_DOCUMENT_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
