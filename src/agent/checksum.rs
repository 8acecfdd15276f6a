//! The manifest's `checksum`: a hex digest whose length picks the algorithm (md5, sha1, sha256,
//! sha512), and the incremental hasher that checks it while the archive streams in.

use std::str::FromStr;

/// An expected digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: Algorithm,
    pub digest: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

/// Why a `checksum` value is not a digest.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChecksumError(pub String);

impl FromStr for Checksum {
    type Err = ChecksumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let _ = s;
        todo!("Checksum::from_str")
    }
}
