//! The one streaming pass: fetch `src`, hash the bytes as they arrive and unpack them at the same
//! time into a staging directory beside `dest`; nothing reaches `dest` before the digest matched.

use std::path::Path;

use super::checksum::Checksum;
use super::log::RunLog;
use super::source::FetchOptions;

/// A verified, unpacked release waiting in its staging directory (removed on drop).
#[derive(Debug)]
pub struct Staged {
    /// The staging directory; the unpacked tree is its content.
    pub dir: tempfile::TempDir,
    /// Lowercase hex digest of the compressed bytes (matches the manifest's checksum).
    pub digest_hex: String,
    /// Number of compressed bytes fetched.
    pub bytes: u64,
}

impl Staged {
    /// The unpacked tree.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Why the fetch-verify-unpack pass failed; one line that says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Todo(String),
}

/// Fetches `src`, verifies it against `checksum` and unpacks it into a new staging directory
/// created inside `staging_parent` (which must be on the same filesystem as `dest`).
pub async fn fetch_and_unpack(
    src: &str,
    checksum: &Checksum,
    staging_parent: &Path,
    opts: &FetchOptions,
    log: &RunLog,
) -> Result<Staged, PipelineError> {
    let _ = (src, checksum, staging_parent, opts, log);
    todo!("fetch_and_unpack")
}
