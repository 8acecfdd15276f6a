//! The HTTP client every watch polls with (the GitHub API and watched manifests), built in one
//! place so that they share a user agent and timeouts.

use std::time::Duration;

/// The HTTP client every watch polls with (GitHub API and watched manifests): one user agent,
/// and timeouts so a stalled server cannot hold a watch forever.
pub fn build() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("cutover/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}
