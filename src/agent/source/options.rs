//! How to fetch (`FetchOptions`): timeout, retries, bandwidth, headers, a token scoped to one URL
//! prefix and S3 settings; the same options serve the manifest and the `src` archive.

use std::time::Duration;

use super::s3::S3Settings;

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
    /// A bearer token for URLs under one prefix only (`cutover watch` hands the agent its GitHub
    /// token for the watched repository's release assets, and for nothing else).
    pub token_for: Option<TokenFor>,
    /// Draw a progress bar on stderr (the agent sets this when stderr is a terminal).
    pub progress: bool,
    /// Explicit S3 endpoint, region and credentials; `None` uses the AWS default chain
    /// (environment, profile, instance metadata), which is what production wants. Tests set
    /// it because they cannot change the environment of a multi-threaded test process.
    pub s3: Option<S3Settings>,
}

/// A bearer token sent only to URLs that start with `url_prefix`, with `Accept:
/// application/octet-stream` (what GitHub's API asset URLs need to serve the bytes). reqwest drops
/// it when a redirect leaves the host, as GitHub's does to its storage.
#[derive(Clone)]
pub struct TokenFor {
    pub url_prefix: String,
    pub token: String,
}

impl std::fmt::Debug for TokenFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenFor({} <redacted>)", self.url_prefix)
    }
}

impl TokenFor {
    /// Whether `url` gets the token.
    pub fn covers(&self, url: &str) -> bool {
        !self.url_prefix.is_empty() && url.starts_with(&self.url_prefix)
    }
}
