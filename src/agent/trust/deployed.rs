//! What was last deployed from a signed manifest, per app: `STATE/signed/<app>.json`, beside the
//! agent's replay marks, written atomically once a deploy succeeded. A signed manifest older than
//! it is a replay or a downgrade and is refused; the same version may be deployed again.
//!
//! The record is the agent's own, for `app:` and plain manifests alike (a plain manifest has no
//! supervisor to ask), so `cutover rollback` does not change it: going back stays the
//! supervisor's job, and a later signed version moves forward from the newest deployed.

use std::cmp::Ordering;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::comment::SignedRelease;
use super::error::TrustError;
use super::order;

/// The newest signed version of an app deployed on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    pub app: String,
    pub version: String,
    /// The manifest it came from and when (RFC 3339), for an operator reading the file.
    pub url: String,
    pub deployed_at: String,
}

fn record_path(state_dir: &Path, app: &str) -> PathBuf {
    // `comment::parse` admits only plain names, so the app name is a safe file name.
    state_dir.join("signed").join(format!("{app}.json"))
}

/// The record of `app`, if there is one.
pub fn last(state_dir: &Path, app: &str) -> Result<Option<Deployed>, TrustError> {
    let path = record_path(state_dir, app);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(TrustError::BadRecord {
                path,
                reason: err.to_string(),
            })
        }
    };
    // A record that cannot be read refuses rather than forgets: forgetting would let a replay in.
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| TrustError::BadRecord {
            path,
            reason: e.to_string(),
        })
}

/// Refuses `release` when it is older than the version last deployed of its app.
pub fn check_not_older(state_dir: &Path, release: &SignedRelease) -> Result<(), TrustError> {
    let Some(last) = last(state_dir, &release.app)? else {
        return Ok(());
    };
    if order::compare(&release.version, &last.version) == Ordering::Less {
        return Err(TrustError::Downgrade {
            app: release.app.clone(),
            version: release.version.clone(),
            last: last.version,
            at: last.deployed_at,
        });
    }
    Ok(())
}

/// Records `release` as deployed from `url`, unless a newer version is on record already.
pub fn record(state_dir: &Path, release: &SignedRelease, url: &str) -> std::io::Result<()> {
    if let Ok(Some(last)) = last(state_dir, &release.app) {
        if order::compare(&release.version, &last.version) == Ordering::Less {
            return Ok(());
        }
    }
    let path = record_path(state_dir, &release.app);
    let dir = path.parent().unwrap_or(state_dir);
    std::fs::create_dir_all(dir)?;
    let entry = Deployed {
        app: release.app.clone(),
        version: release.version.clone(),
        url: url.to_owned(),
        deployed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    let json = serde_json::to_vec_pretty(&entry).map_err(std::io::Error::other)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&json)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&path).map_err(|e| e.error)?;
    // The rename is only durable once the directory entry is on disk.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str) -> SignedRelease {
        SignedRelease {
            app: "shop".into(),
            version: version.into(),
            expires: std::time::SystemTime::now(),
            key_id: "K".into(),
        }
    }

    #[test]
    fn older_versions_are_refused_the_same_and_newer_pass() {
        let state = tempfile::tempdir().expect("tempdir");
        check_not_older(state.path(), &release("1.0.0")).expect("nothing on record");
        record(state.path(), &release("1.4.2"), "file:///m.yml").expect("record");
        let err = check_not_older(state.path(), &release("1.4.1")).unwrap_err();
        assert!(err.to_string().contains("older than 1.4.2"), "{err}");
        check_not_older(state.path(), &release("1.4.2")).expect("the same version again");
        check_not_older(state.path(), &release("1.10.0")).expect("newer");
    }

    #[test]
    fn a_corrupt_record_refuses() {
        let state = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(state.path().join("signed")).expect("mkdir");
        std::fs::write(state.path().join("signed/shop.json"), "{").expect("write");
        let err = check_not_older(state.path(), &release("9.9.9")).unwrap_err();
        assert!(err.to_string().contains("remove it"), "{err}");
    }
}
