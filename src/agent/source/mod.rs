//! Where archives and manifests come from: `file://`, `http(s)://` and `s3://` URLs, opened as
//! byte streams with retry, an overall timeout and a bandwidth cap.

use std::time::Duration;

use super::log::RunLog;

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
}

/// Why a fetch failed; the message names the URL and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Todo(String),
}

/// Fetches a small document (the manifest) whole, with the same retry and timeout as `src`.
pub async fn fetch_bytes(
    url: &str,
    opts: &FetchOptions,
    log: &RunLog,
) -> Result<Vec<u8>, FetchError> {
    let _ = (url, opts, log);
    todo!("fetch_bytes")
}
