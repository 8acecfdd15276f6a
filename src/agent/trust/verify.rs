//! Checks one manifest against its detached minisign signature (`verify`, on the bytes as
//! fetched, before any YAML is read) and then the parsed manifest against what was signed
//! (`check_manifest`).

use std::time::SystemTime;

use minisign_verify::{Error as MinisignError, Signature};

use super::comment::{self, SignedRelease};
use super::error::TrustError;
use super::keys::{key_id_hex, key_id_of, TrustedKeys};
use crate::agent::checksum::Algorithm;
use crate::agent::manifest::Manifest;

/// Where a manifest's signature is: its URL with `.minisig` appended, as minisign names it.
pub fn signature_url(manifest_url: &str) -> String {
    format!("{manifest_url}.minisig")
}

/// What `signature` (the text of `sig_url`) vouches for, if a trusted key made it over exactly
/// `manifest` and it has not expired at `now`.
pub fn verify(
    keys: &TrustedKeys,
    manifest: &[u8],
    signature: &[u8],
    sig_url: &str,
    now: SystemTime,
) -> Result<SignedRelease, TrustError> {
    let malformed = |reason: String| TrustError::Malformed {
        url: sig_url.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(signature).map_err(|_| malformed("not text".into()))?;
    let sig_line = text.lines().nth(1).unwrap_or_default();
    let id = key_id_of(sig_line, 74).map_err(|e| malformed(format!("its second line is {e}")))?;
    let key_id = key_id_hex(&id);
    let key = keys.find(&id).ok_or_else(|| TrustError::UnknownKey {
        url: sig_url.to_owned(),
        key_id: key_id.clone(),
        keys: keys.path.clone(),
    })?;
    let decoded = Signature::decode(text).map_err(|e| malformed(format!("{e:?}")))?;
    // Legacy (non-prehashed) signatures are refused: current minisign never makes them.
    match key.verify(manifest, &decoded, false) {
        Ok(()) => {}
        Err(MinisignError::UnexpectedAlgorithm) => {
            return Err(TrustError::Legacy {
                url: sig_url.to_owned(),
            })
        }
        Err(MinisignError::InvalidSignature) => {
            return Err(TrustError::BadSignature {
                url: sig_url.to_owned(),
                key_id,
            })
        }
        Err(other) => return Err(malformed(format!("{other:?}"))),
    }
    // Only now, with the signature good, is the trusted comment known to be well formed.
    let trusted = decoded.trusted_comment();
    let release = comment::parse(trusted, &key_id).map_err(|reason| TrustError::NoComment {
        url: sig_url.to_owned(),
        reason,
        found: trusted.chars().take(120).collect(),
    })?;
    if release.expires <= now {
        return Err(TrustError::Expired {
            app: release.app,
            version: release.version,
            expires: humantime::format_rfc3339_seconds(release.expires).to_string(),
        });
    }
    Ok(release)
}

/// Holds the parsed manifest to its signature: an `app:` manifest's name (and version, when it
/// sets one) must be the signed ones, and its checksum one that cannot be forged.
pub fn check_manifest(release: &SignedRelease, manifest: &Manifest) -> Result<(), TrustError> {
    let Some(files) = &manifest.files else {
        return Ok(());
    };
    let algorithm = files.checksum.algorithm;
    if matches!(algorithm, Algorithm::Md5 | Algorithm::Sha1) {
        return Err(TrustError::WeakChecksum {
            algorithm: algorithm.to_string(),
        });
    }
    let Some(app) = &files.app else {
        return Ok(());
    };
    if app.name != release.app {
        return Err(TrustError::OtherApp {
            signed: release.app.clone(),
            named: app.name.clone(),
        });
    }
    match &app.version {
        Some(version) if *version != release.version => Err(TrustError::OtherVersion {
            app: app.name.clone(),
            signed: release.version.clone(),
            named: version.clone(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const MANIFEST: &str = include_str!("../../../fixtures/signed/site.yml");

    fn keys() -> TrustedKeys {
        let text = include_str!("../../../fixtures/signed/trust.yml");
        TrustedKeys::parse(Path::new("trust.yml"), text).expect("fixture keys")
    }

    fn check(manifest: &str, signature: &str) -> Result<SignedRelease, TrustError> {
        verify(
            &keys(),
            manifest.as_bytes(),
            signature.as_bytes(),
            "site.yml.minisig",
            SystemTime::now(),
        )
    }

    #[test]
    fn a_good_signature_gives_what_it_vouches_for() {
        let signature = include_str!("../../../fixtures/signed/site.yml.minisig");
        let release = check(MANIFEST, signature).expect("verifies");
        assert_eq!(
            (release.app.as_str(), release.version.as_str()),
            ("site", "1.4.2")
        );
        assert_eq!(release.key_id, keys().ids()[0]);
    }

    #[test]
    fn each_bad_signature_is_refused_with_its_reason() {
        let good = include_str!("../../../fixtures/signed/site.yml.minisig");
        let tampered_comment = good.replace("version=1.4.2", "version=9.9.9");
        let cases = [
            (
                MANIFEST.replace("/srv/site", "/srv/other"),
                good.to_owned(),
                "does not match the manifest",
            ),
            (
                MANIFEST.to_owned(),
                tampered_comment,
                "does not match the manifest",
            ),
            (
                MANIFEST.to_owned(),
                include_str!("../../../fixtures/signed/expired.minisig").to_owned(),
                "until 2020-01-01T00:00:00Z, which has passed",
            ),
            (
                MANIFEST.to_owned(),
                include_str!("../../../fixtures/signed/plain.minisig").to_owned(),
                "has no cutover trusted comment (it does not start with `cutover`)",
            ),
            (
                MANIFEST.to_owned(),
                include_str!("../../../fixtures/signed/other-key.minisig").to_owned(),
                "which is not among the trusted keys in trust.yml",
            ),
            (
                MANIFEST.to_owned(),
                "not a signature".to_owned(),
                "is not a minisign signature",
            ),
        ];
        for (manifest, signature, expected) in cases {
            let err = check(&manifest, &signature).unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        }
    }

    #[test]
    fn the_manifest_is_held_to_its_signature() {
        let release = SignedRelease {
            app: "shop".into(),
            version: "1.4.2".into(),
            expires: SystemTime::now(),
            key_id: "K".into(),
        };
        let parse = |text: &str| crate::agent::manifest::parse(text, &|_| None).expect("parses");
        let sha256 = "0".repeat(64);
        let app = |name: &str, version: &str| {
            format!(
                "src: file:///a.tgz\nchecksum: {sha256}\ndest: /srv/shop\napp:\n  name: {name}\n{version}  run: ./shop\n  listen: 127.0.0.1:8080\n"
            )
        };
        check_manifest(&release, &parse(&app("shop", "  version: 1.4.2\n"))).expect("same app");
        check_manifest(&release, &parse(&app("shop", ""))).expect("no version set");
        let cases = [
            (
                app("admin", ""),
                "signed for app shop but its app.name is admin",
            ),
            (
                app("shop", "  version: 1.4.3\n"),
                "signed as shop version 1.4.2 but its app.version is 1.4.3",
            ),
            (
                format!(
                    "src: file:///a.tgz\nchecksum: {}\ndest: /srv/x\n",
                    "0".repeat(32)
                ),
                "md5 checksum, refused",
            ),
            (
                format!(
                    "src: file:///a.tgz\nchecksum: {}\ndest: /srv/x\n",
                    "0".repeat(40)
                ),
                "sha1 checksum, refused",
            ),
        ];
        for (text, expected) in cases {
            let err = check_manifest(&release, &parse(&text))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        }
    }
}
