//! An app's `tls:` section: the certificate its public address serves (chosen by SNI among the
//! apps sharing the address) and whether browsers are told to keep to HTTPS.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `tls: { cert, key, hsts }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// The certificate chain, PEM (leaf first), read by the supervisor: an absolute path.
    /// Reloaded without a restart when it (or `key`) changes on disk.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1): an absolute path.
    pub key: PathBuf,
    /// `Strict-Transport-Security: max-age=…` on every answer over TLS, e.g. `365d`; none unless
    /// set.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub hsts: Option<Duration>,
}

impl TlsSpec {
    /// What is wrong with the section on its own, naming the key and the fix.
    pub fn check(&self, app: &str) -> Result<(), String> {
        for (key, path) in [("cert", &self.cert), ("key", &self.key)] {
            if !path.is_absolute() {
                return Err(format!(
                    "tls.{key} of {app} ({}) is not an absolute path; the supervisor reads it, so write it like /etc/cutover/{app}.pem",
                    path.display()
                ));
            }
        }
        if self.hsts.is_some_and(|age| age.is_zero()) {
            return Err(format!(
                "tls.hsts of {app} is 0, which tells browsers to forget HTTPS; remove it or give a max-age such as 365d"
            ));
        }
        Ok(())
    }
}
