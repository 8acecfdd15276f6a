//! The manifest's `checksum`: a hex digest whose length picks the algorithm (md5, sha1, sha256,
//! sha512), and the incremental hasher that checks it while the archive streams in.

use std::fmt;
use std::str::FromStr;

use digest::Digest;

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

impl Algorithm {
    /// The algorithm whose hex digest has `len` characters, as stretcher picks it.
    fn from_hex_len(len: usize) -> Option<Algorithm> {
        match len {
            32 => Some(Algorithm::Md5),
            40 => Some(Algorithm::Sha1),
            64 => Some(Algorithm::Sha256),
            128 => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    /// A fresh incremental hasher for this algorithm.
    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Md5 => Hasher::Md5(md5::Md5::new()),
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        })
    }
}

/// Why a `checksum` value is not a digest.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChecksumError(pub String);

impl FromStr for Checksum {
    type Err = ChecksumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_text = s.trim();
        let algorithm = Algorithm::from_hex_len(hex_text.len()).ok_or_else(|| {
            ChecksumError(format!(
                "checksum has {} characters, expected a hex digest of 32 (md5), 40 (sha1), \
                 64 (sha256) or 128 (sha512) characters; fix the manifest's checksum",
                hex_text.len()
            ))
        })?;
        // `hex` accepts both cases, which is what stretcher's comparison does.
        let digest = hex::decode(hex_text).map_err(|e| {
            ChecksumError(format!(
                "checksum '{hex_text}' is not hexadecimal ({e}); fix the manifest's checksum"
            ))
        })?;
        Ok(Checksum { algorithm, digest })
    }
}

impl Checksum {
    /// The expected digest as lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.digest)
    }

    /// A fresh hasher of this checksum's algorithm.
    pub fn hasher(&self) -> Hasher {
        self.algorithm.hasher()
    }
}

/// An incremental hasher of one of the four algorithms, fed while the bytes stream in.
#[derive(Clone)]
pub enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({})", self.algorithm())
    }
}

impl Hasher {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Md5(_) => Algorithm::Md5,
            Hasher::Sha1(_) => Algorithm::Sha1,
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_picks_the_algorithm() {
        for (len, algorithm) in [
            (32, Algorithm::Md5),
            (40, Algorithm::Sha1),
            (64, Algorithm::Sha256),
            (128, Algorithm::Sha512),
        ] {
            let c: Checksum = "a".repeat(len).parse().unwrap();
            assert_eq!(c.algorithm, algorithm);
            assert_eq!(c.digest.len(), len / 2);
        }
    }

    #[test]
    fn case_and_whitespace_do_not_matter() {
        let upper: Checksum = "  D41D8CD98F00B204E9800998ECF8427E\n".parse().unwrap();
        let lower: Checksum = "d41d8cd98f00b204e9800998ecf8427e".parse().unwrap();
        assert_eq!(upper, lower);
        assert_eq!(upper.to_hex(), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn a_wrong_length_names_the_length_and_the_accepted_ones() {
        let err = "abc".parse::<Checksum>().unwrap_err().to_string();
        assert!(err.contains("has 3 characters"), "{err}");
        assert!(
            err.contains("32 (md5), 40 (sha1), 64 (sha256) or 128 (sha512)"),
            "{err}"
        );
    }

    #[test]
    fn non_hex_is_refused() {
        let err = "z".repeat(32).parse::<Checksum>().unwrap_err().to_string();
        assert!(err.contains("not hexadecimal"), "{err}");
    }

    #[test]
    fn the_hasher_matches_known_digests() {
        let sums = [
            (Algorithm::Md5, "900150983cd24fb0d6963f7d28e17f72"),
            (Algorithm::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d"),
            (
                Algorithm::Sha256,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
        ];
        for (algorithm, expected) in sums {
            let mut h = algorithm.hasher();
            h.update(b"a");
            h.update(b"bc");
            assert_eq!(hex::encode(h.finish()), expected, "{algorithm}");
        }
    }
}
