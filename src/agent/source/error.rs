//! Why a fetch failed (`FetchError`), with a message that names the URL and says what to do, and
//! which failures another attempt may cure.

use std::path::PathBuf;
use std::time::Duration;

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
