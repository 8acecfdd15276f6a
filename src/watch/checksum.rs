//! Where a release asset's checksum comes from: the asset's own `digest` field (computed by
//! GitHub on upload) or a `SHA256SUMS`-style asset published beside it.
//!
//! Verification is never skipped: without a checksum the release is refused, with the reason
//! recorded for `cutover status`. The agent then checks the downloaded bytes against it.

use super::github::{Asset, GithubClient, GithubError};
use super::select::Candidate;

/// A checksums file is a few lines per asset; anything bigger is not one.
const SUMS_LIMIT: usize = 1 << 20;

/// Why no trustworthy checksum was found.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    #[error("refused: asset {asset} has no digest and no checksums_asset is configured, and verification is never skipped")]
    Missing { asset: String },
    #[error("refused: asset {asset} has digest {digest:?}, which is not sha256:HEX or sha512:HEX")]
    BadDigest { asset: String, digest: String },
    #[error("refused: {sums} does not list {asset}")]
    NotListed { sums: String, asset: String },
    #[error("refused: {sums} says {listed} for {asset} but GitHub's digest is {digest}; the release may have been tampered with")]
    Mismatch {
        sums: String,
        asset: String,
        listed: String,
        digest: String,
    },
    #[error("cannot download checksums asset: {0}")]
    Download(#[from] GithubError),
}

impl ChecksumError {
    /// A failed download is worth retrying at the next check; the others need a new release.
    pub fn is_transient(&self) -> bool {
        matches!(self, ChecksumError::Download(_))
    }
}

/// The hex checksum the rendered manifest carries for `cand.asset`.
pub async fn resolve(client: &GithubClient, cand: &Candidate<'_>) -> Result<String, ChecksumError> {
    let digest = match &cand.asset.digest {
        Some(d) => Some(from_digest(cand.asset, d)?),
        None => None,
    };
    let Some(sums_asset) = cand.checksums_asset else {
        return digest.ok_or_else(|| ChecksumError::Missing {
            asset: cand.asset.name.clone(),
        });
    };
    let bytes = client.download_small(sums_asset, SUMS_LIMIT).await?;
    let text = String::from_utf8_lossy(&bytes);
    let listed = from_sums(&text, &cand.asset.name).ok_or_else(|| ChecksumError::NotListed {
        sums: sums_asset.name.clone(),
        asset: cand.asset.name.clone(),
    })?;
    // Both sources present: they must agree, or one of them was swapped after upload.
    if let Some(digest) = digest {
        if digest.len() == listed.len() && digest != listed {
            return Err(ChecksumError::Mismatch {
                sums: sums_asset.name.clone(),
                asset: cand.asset.name.clone(),
                listed,
                digest,
            });
        }
    }
    Ok(listed)
}

/// `sha256:HEX` → `HEX` (lowercase); the agent tells the algorithm by the length.
fn from_digest(asset: &Asset, digest: &str) -> Result<String, ChecksumError> {
    let bad = || ChecksumError::BadDigest {
        asset: asset.name.clone(),
        digest: digest.to_owned(),
    };
    let (algo, hex) = digest.split_once(':').ok_or_else(bad)?;
    let want = match algo.to_ascii_lowercase().as_str() {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(bad()),
    };
    if hex.len() != want || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(hex.to_ascii_lowercase())
}

/// The checksum for `name` in `sha256sum`/`sha512sum` output: `HEX  name` or `HEX *name` (binary
/// mode), optionally with a `./` or directory prefix on the name.
pub fn from_sums(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (hex, file) = line.trim().split_once(char::is_whitespace)?;
        let file = file.trim_start().trim_start_matches('*');
        let base = file.rsplit('/').next().unwrap_or(file);
        let valid = matches!(hex.len(), 64 | 128) && hex.chars().all(|c| c.is_ascii_hexdigit());
        (valid && base == name).then(|| hex.to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "2151b604e3429bff440b9fbc03eb3617bc2603cda96c95b9bb05277f9ddba255";

    fn asset(digest: Option<&str>) -> Asset {
        Asset {
            id: 1,
            name: "shop.tar.gz".into(),
            url: "u".into(),
            browser_download_url: "b".into(),
            digest: digest.map(str::to_owned),
            size: 1,
        }
    }

    #[test]
    fn digest_field_gives_the_hex() {
        let a = asset(None);
        assert_eq!(
            from_digest(&a, &format!("sha256:{}", A.to_uppercase())).unwrap(),
            A
        );
        assert!(from_digest(&a, "md5:abcd").is_err());
        assert!(from_digest(&a, "sha256:xyz").is_err());
    }

    #[test]
    fn sums_files_in_both_modes_and_with_paths() {
        let text = format!("{A}  other.tar.gz\n{A} *dist/shop.tar.gz\n");
        assert_eq!(from_sums(&text, "shop.tar.gz").as_deref(), Some(A));
        assert_eq!(from_sums(&text, "missing.tar.gz"), None);
        assert_eq!(from_sums("nothex  shop.tar.gz", "shop.tar.gz"), None);
    }
}
