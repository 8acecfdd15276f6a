//! What ACME leaves on disk, beside the state file: `STATE/certs/<host>.pem` and `<host>.key`
//! (one pair per host, so one bad file never takes the others down; `*.` of a wildcard is
//! written `_wildcard.`) and the account's
//! credentials in `STATE/acme/account-<hash of the directory>.json`; every file written
//! atomically (temp file, fsync, rename, fsync of the directory), keys and credentials 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::supervisor::proxy::{certificate_validity as validity, load_certificate};

/// A certificate as stored for one host: what the proxy serves and when it stops being valid.
#[derive(Debug, Clone)]
pub struct Stored {
    pub cert: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The files of `host`'s certificate.
pub fn cert_paths(state_dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    let dir = state_dir.join("certs");
    let host = match host.strip_prefix("*.") {
        Some(base) => format!("_wildcard.{base}"),
        None => host.to_owned(),
    };
    (
        dir.join(format!("{host}.pem")),
        dir.join(format!("{host}.key")),
    )
}

/// `host`'s stored certificate: `Ok(None)` when there is none, an error naming the file when
/// it cannot be served (to order a new one).
pub fn load(state_dir: &Path, host: &str) -> Result<Option<Stored>, String> {
    let (cert, key) = cert_paths(state_dir, host);
    if !cert.exists() && !key.exists() {
        return Ok(None);
    }
    let served = load_certificate(&cert, &key)?;
    let leaf = served
        .cert
        .first()
        .ok_or_else(|| format!("{} holds no certificate", cert.display()))?;
    let (not_before, not_after) =
        validity(leaf.as_ref()).map_err(|why| format!("{}: {why}", cert.display()))?;
    Ok(Some(Stored {
        cert: served,
        not_before,
        not_after,
    }))
}

/// Stores `host`'s new certificate chain and key (PEM), the key first: a crash in between
/// leaves a key that does not fit, which `load` reports and a new order replaces.
pub fn save(state_dir: &Path, host: &str, chain_pem: &str, key_pem: &str) -> std::io::Result<()> {
    let (cert, key) = cert_paths(state_dir, host);
    write_atomic(&key, key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert, chain_pem.as_bytes(), 0o644)
}

/// Where the account for `directory` is kept.
pub fn account_path(state_dir: &Path, directory: &str) -> PathBuf {
    let hash = Sha256::digest(directory.as_bytes());
    let short: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    state_dir.join("acme").join(format!("account-{short}.json"))
}

/// The stored account credentials for `directory`, if any.
pub fn load_account(state_dir: &Path, directory: &str) -> Result<Option<Vec<u8>>, String> {
    let path = account_path(state_dir, directory);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

pub fn save_account(state_dir: &Path, directory: &str, json: &[u8]) -> std::io::Result<()> {
    write_atomic(&account_path(state_dir, directory), json, 0o600)
}

/// Temp file, fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_host_stands_alone_a_bad_file_is_named_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["good.example".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        save(
            dir.path(),
            "good.example",
            &cert.pem(),
            &key.serialize_pem(),
        )
        .unwrap();
        save(dir.path(), "bad.example", "not a certificate", "nor a key").unwrap();
        let good = load(dir.path(), "good.example").unwrap().expect("stored");
        assert!(good.not_after > good.not_before);
        let err = load(dir.path(), "bad.example").unwrap_err();
        assert!(err.contains("bad.example"), "{err}");
        assert!(load(dir.path(), "none.example").unwrap().is_none());
        use std::os::unix::fs::PermissionsExt;
        let (_, key_path) = cert_paths(dir.path(), "good.example");
        let mode = std::fs::metadata(key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
