//! Where archives and manifests come from: `file://`, `http(s)://` and `s3://` URLs, opened as
//! byte streams with retry, an overall timeout and a bandwidth cap.
//!
//! A source is opened at a byte offset so that a transfer broken mid-stream can resume where it
//! stopped (HTTP `Range`, S3 ranged GET, a seek for files); [`Opened::resumed`] says whether the
//! origin honoured the offset, because a server may answer a ranged request with the whole body.

mod file;
mod http;
pub mod s3;
pub mod throttle;

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use super::log::RunLog;
pub use s3::S3Settings;

/// The largest manifest [`fetch_bytes`] accepts; a manifest is a few hundred bytes of YAML.
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;

/// How to fetch: the same options serve the manifest and the `src` archive.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Limit for the whole fetch, retries included; `None` waits forever.
    pub timeout: Option<Duration>,
    /// Extra attempts after the first one fails (including a connection broken mid-stream).
    pub retries: u32,
    /// Pause between attempts.
    pub retry_wait: Duration,
    /// Bytes per second; `None` is unlimited.
    pub max_bandwidth: Option<u64>,
    /// Extra HTTP request headers (`--http-header K=V`), for private origins.
    pub headers: Vec<(String, String)>,
    /// Draw a progress bar on stderr (the agent sets this when stderr is a terminal).
    pub progress: bool,
    /// Explicit S3 endpoint, region and credentials; `None` uses the AWS default chain
    /// (environment, profile, instance metadata), which is what production wants. Tests set
    /// it because they cannot change the environment of a multi-threaded test process.
    pub s3: Option<S3Settings>,
}

/// Why a fetch failed; the message names the URL and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unsupported URL scheme '{scheme}' in {url}; use file://, http://, https://, s3:// or gs://")]
    UnsupportedScheme { url: String, scheme: String },
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("HTTP {status} fetching {url}; check that the URL is right and the file is published")]
    Status { url: String, status: String },
    #[error("could not connect for {url}: {detail}; check the host name, the network and proxy settings")]
    Connect { url: String, detail: String },
    #[error("fetching {url} failed: {detail}; check the network and the server")]
    Transfer { url: String, detail: String },
    #[error("connection broken after {at} bytes of {url}: {detail}")]
    Interrupted {
        url: String,
        at: u64,
        detail: String,
    },
    #[error("timed out after {} fetching {url}; raise --timeout or check the network", humantime::format_duration(*after))]
    TimedOut { url: String, after: Duration },
    #[error("could not read {path} for {url}: {source}; check the path and its permissions")]
    File {
        url: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "S3 object {url} does not exist (NoSuchKey); check the key and that the upload finished"
    )]
    S3NoSuchKey { url: String },
    #[error("S3 bucket '{bucket}' of {url} does not exist (NoSuchBucket); check the bucket name and region")]
    S3NoSuchBucket { url: String, bucket: String },
    #[error("S3 refused the credentials for {url}: {detail}; check AWS_PROFILE / AWS_ACCESS_KEY_ID or the instance role")]
    S3Credentials { url: String, detail: String },
    #[error("S3 request for {url} failed: {detail}")]
    S3 { url: String, detail: String },
    #[error("{url} is larger than {limit} bytes, too large for a manifest; check the URL")]
    TooLarge { url: String, limit: usize },
}

impl FetchError {
    /// Whether another attempt may succeed. Errors that only a human can fix (a bad URL, a
    /// refused credential, a missing local file or bucket) fail at once instead of wasting the
    /// retry budget; a missing object or HTTP 404 is retried because the upload may be racing
    /// the deploy event, which is why stretcher retries every error.
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::UnsupportedScheme { .. }
            | FetchError::InvalidUrl { .. }
            | FetchError::File { .. }
            | FetchError::S3NoSuchBucket { .. }
            | FetchError::S3Credentials { .. }
            | FetchError::TooLarge { .. }
            | FetchError::TimedOut { .. } => false,
            FetchError::Status { status, .. } => {
                !(status.starts_with("401") || status.starts_with("403"))
            }
            _ => true,
        }
    }
}

/// A parsed source URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Http(String),
    S3 { bucket: String, key: String },
}

impl Source {
    /// Parses `url`; a plain path (no `scheme://`) is a local file.
    pub fn parse(url: &str) -> Result<Source, FetchError> {
        let invalid = |reason: &str| FetchError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Ok(Source::File(PathBuf::from(url)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                // `file:///abs` leaves `/abs`; `file://localhost/abs` is the same file.
                let path = rest.strip_prefix("localhost").unwrap_or(rest);
                if !path.starts_with('/') {
                    return Err(invalid(
                        "a file URL needs an absolute path, as in file:///srv/app.tar.gz",
                    ));
                }
                Ok(Source::File(PathBuf::from(path)))
            }
            "http" | "https" => Ok(Source::Http(url.to_owned())),
            "s3" => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() || key.is_empty() {
                    return Err(invalid(
                        "an S3 URL needs a bucket and a key, as in s3://bucket/app.tar.gz",
                    ));
                }
                Ok(Source::S3 {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                })
            }
            // Google Cloud Storage serves public objects over plain HTTPS; private buckets need
            // OAuth, which cutover does not do (a 401/403 then says so through the status).
            "gs" => Ok(Source::Http(format!(
                "https://storage.googleapis.com/{rest}"
            ))),
            other => Err(FetchError::UnsupportedScheme {
                url: url.to_owned(),
                scheme: other.to_owned(),
            }),
        }
    }
}

/// A stream of chunks from an origin.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, FetchError>> + Send>>;

/// An open transfer.
pub struct Opened {
    pub stream: ByteStream,
    /// Whether the stream starts at the requested offset; `false` means it starts at byte 0.
    pub resumed: bool,
    /// The size of the whole object when the origin says it.
    pub total: Option<u64>,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("resumed", &self.resumed)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            Source::parse("file:///srv/a.tgz").unwrap(),
            Source::File("/srv/a.tgz".into())
        );
        assert_eq!(
            Source::parse("/srv/a.tgz").unwrap(),
            Source::File("/srv/a.tgz".into())
        );
        assert_eq!(
            Source::parse("s3://b/dir/a.tgz").unwrap(),
            Source::S3 {
                bucket: "b".into(),
                key: "dir/a.tgz".into()
            }
        );
        assert_eq!(
            Source::parse("gs://b/a.tgz").unwrap(),
            Source::Http("https://storage.googleapis.com/b/a.tgz".into())
        );
        assert!(matches!(
            Source::parse("https://x/a").unwrap(),
            Source::Http(_)
        ));
    }

    #[test]
    fn refuses_unknown_schemes_and_incomplete_urls() {
        let err = Source::parse("ftp://host/a.tgz").unwrap_err().to_string();
        assert!(err.contains("unsupported URL scheme 'ftp'"), "{err}");
        assert!(Source::parse("s3://bucket-only").is_err());
        assert!(Source::parse("file://relative/path").is_err());
    }
}
