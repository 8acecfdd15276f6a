//! Signing keys and signatures made by the real `minisign` tool (Debian package `minisign`), and
//! the trust file that lists their public keys, for the tests of signed manifests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A minisign key pair in its own temp dir, without a password (`-W`).
pub struct Key {
    dir: tempfile::TempDir,
    /// The public key's base64 line, as `trusted_keys` lists it.
    pub public: String,
}

impl Key {
    pub fn generate() -> Key {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("minisign")
            .args(["-G", "-W", "-p"])
            .arg(dir.path().join("key.pub"))
            .arg("-s")
            .arg(dir.path().join("key.sec"))
            .stdin(Stdio::null())
            .output()
            .expect("run minisign (apt-get install minisign; tests/run.sh installs it)");
        assert!(out.status.success(), "minisign -G: {out:?}");
        let text = std::fs::read_to_string(dir.path().join("key.pub")).expect("key.pub");
        let public = text.lines().nth(1).expect("key line").trim().to_owned();
        Key { dir, public }
    }

    /// Signs `file` with `trusted_comment`, writing `FILE.minisig` beside it.
    pub fn sign(&self, file: &Path, trusted_comment: &str) {
        self.minisign_sign(file, Some(trusted_comment));
    }

    /// Signs `file` with minisign's own default trusted comment (timestamp and file name).
    pub fn sign_plain(&self, file: &Path) {
        self.minisign_sign(file, None);
    }

    fn minisign_sign(&self, file: &Path, trusted_comment: Option<&str>) {
        let mut command = Command::new("minisign");
        command
            .arg("-S")
            .arg("-s")
            .arg(self.dir.path().join("key.sec"))
            .arg("-m")
            .arg(file)
            .stdin(Stdio::null());
        if let Some(comment) = trusted_comment {
            command.arg("-t").arg(comment);
        }
        let out = command.output().expect("run minisign -S");
        assert!(out.status.success(), "minisign -S: {out:?}");
    }
}

/// cutover's trusted comment for `app` `version`, expiring at `expires` (RFC 3339).
pub fn comment(app: &str, version: &str, expires: &str) -> String {
    format!("cutover app={app} version={version} expires={expires}")
}

/// A trusted comment valid for a year.
pub fn fresh(app: &str, version: &str) -> String {
    let year = std::time::SystemTime::now() + std::time::Duration::from_secs(365 * 24 * 3600);
    comment(
        app,
        version,
        &humantime::format_rfc3339_seconds(year).to_string(),
    )
}

/// Writes a trust file listing `keys` into `dir` and returns its path.
pub fn trust_file(dir: &Path, keys: &[&Key]) -> PathBuf {
    let mut text = String::from("trusted_keys:\n");
    for key in keys {
        text.push_str(&format!("  - {}\n", key.public));
    }
    let path = dir.join("trust.yml");
    std::fs::write(&path, text).expect("write trust.yml");
    path
}
