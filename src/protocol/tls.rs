//! An app's `tls:` section: the certificate its public address serves (chosen by SNI among the
//! apps sharing the address) — read from files, or ordered over ACME for the app's hosts — and
//! whether browsers are told to keep to HTTPS.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `tls: { cert, key, hsts }` or `tls: { acme: {…}, hsts }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// The certificate chain, PEM (leaf first), read by the supervisor: an absolute path.
    /// Reloaded without a restart when it (or `key`) changes on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1): an absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Certificates ordered from an ACME CA (RFC 8555) for the app's `hosts`, instead of files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeSpec>,
    /// `Strict-Transport-Security: max-age=…` on every answer over TLS, e.g. `365d`; none unless
    /// set.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub hsts: Option<Duration>,
    /// A plain-HTTP address (`0.0.0.0:80`) where requests for the app's hosts are answered
    /// `308 Permanent Redirect` to the same URL over HTTPS; none unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_from: Option<String>,
}

/// `tls.acme`: where certificates come from and how the CA checks the app holds its names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSpec {
    /// The CA's directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// Where the CA writes about the account (`mailto:ops@example.com`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact: Vec<String>,
    /// How the CA checks each name: `http-01` (port 80), `tls-alpn-01` (the app's own port) or
    /// `dns-01` (a TXT record set by `dns_hook`; the only one a wildcard name can use).
    #[serde(default)]
    pub challenge: Challenge,
    /// For `dns-01`: the command that publishes and removes the TXT record, run as
    /// `dns_hook present|cleanup _acme-challenge.<name>. <value>`; an absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_hook: Option<PathBuf>,
    /// For `dns-01`: how long to wait after the hook published the record before the CA is
    /// asked to look (for DNS that takes time to spread); none unless set.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub dns_wait: Option<Duration>,
    /// External account binding, for CAs that ask for one (ZeroSSL, Google).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eab: Option<Eab>,
    /// A root certificate (PEM) to trust for the directory's own HTTPS besides the public ones:
    /// for a private or test CA such as Pebble.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The plain-HTTP address HTTP-01 challenges come to; `0.0.0.0:80` unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,
}

/// The challenge type a CA checks a name with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Challenge {
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// A TXT record under `_acme-challenge`, published by the app's `dns_hook`; the only
    /// challenge a wildcard name can use.
    #[serde(rename = "dns-01")]
    Dns01,
}

impl std::fmt::Display for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Dns01 => "dns-01",
        })
    }
}

/// An external account binding: the key id and its HMAC key (base64url), as the CA gave them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eab {
    pub kid: String,
    pub hmac_key: String,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The HMAC key is a secret: never in a log line.
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("hmac_key", &"…")
            .finish()
    }
}

/// Where HTTP-01 challenges come when `http_listen` is not set.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:80";

impl AcmeSpec {
    /// The address HTTP-01 challenges come to.
    pub fn http_listen(&self) -> Result<std::net::SocketAddr, String> {
        let text = self.http_listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN);
        text.parse().map_err(|_| {
            format!("tls.acme.http_listen ({text}) is not an address; write it like 0.0.0.0:80")
        })
    }
}

impl TlsSpec {
    /// What is wrong with the section on its own (for `app`, serving `hosts`), naming the key
    /// and the fix.
    pub fn check(&self, app: &str, hosts: &[String]) -> Result<(), String> {
        match (&self.cert, &self.key, &self.acme) {
            (Some(cert), Some(key), None) => check_paths(app, cert, key)?,
            (None, None, Some(acme)) => acme.check(app, hosts)?,
            (Some(_), Some(_), Some(_)) => {
                return Err(format!(
                    "tls of {app} has both cert/key and acme; keep cert and key for a certificate of your own, or acme to have one ordered"
                ))
            }
            (None, None, None) => {
                return Err(format!(
                    "tls of {app} names no certificate; give cert and key, or acme: {{ directory: URL }}"
                ))
            }
            (cert, _, _) => {
                let missing = if cert.is_none() { "cert" } else { "key" };
                return Err(format!(
                    "tls.{missing} of {app} is missing; cert and key go together (or use acme instead of both)"
                ));
            }
        }
        if self.hsts.is_some_and(|age| age.is_zero()) {
            return Err(format!(
                "tls.hsts of {app} is 0, which tells browsers to forget HTTPS; remove it or give a max-age such as 365d"
            ));
        }
        self.redirect_addr(app)?;
        Ok(())
    }

    /// `redirect_from` as an address, if set.
    pub fn redirect_addr(&self, app: &str) -> Result<Option<std::net::SocketAddr>, String> {
        self.redirect_from
            .as_deref()
            .map(|addr| {
                addr.parse().map_err(|_| {
                    format!("tls.redirect_from {addr:?} of {app} is not an address like 0.0.0.0:80")
                })
            })
            .transpose()
    }
}

fn check_paths(app: &str, cert: &std::path::Path, key: &std::path::Path) -> Result<(), String> {
    for (name, path) in [("cert", cert), ("key", key)] {
        if !path.is_absolute() {
            return Err(format!(
                "tls.{name} of {app} ({}) is not an absolute path; the supervisor reads it, so write it like /etc/cutover/{app}.pem",
                path.display()
            ));
        }
    }
    Ok(())
}

impl AcmeSpec {
    fn check(&self, app: &str, hosts: &[String]) -> Result<(), String> {
        if !(self.directory.starts_with("https://") || self.directory.starts_with("http://")) {
            return Err(format!(
                "tls.acme.directory of {app} ({}) is not a URL; write it like https://acme-v02.api.letsencrypt.org/directory",
                self.directory
            ));
        }
        match (&self.challenge, &self.dns_hook) {
            (Challenge::Dns01, None) => {
                return Err(format!(
                    "tls.acme.challenge of {app} is dns-01 but no dns_hook publishes the TXT record; set dns_hook to a command run as `HOOK present|cleanup NAME VALUE`"
                ))
            }
            (Challenge::Dns01, Some(hook)) if !hook.is_absolute() => {
                return Err(format!(
                    "tls.acme.dns_hook of {app} ({}) is not an absolute path; write it like /etc/cutover/dns-hook",
                    hook.display()
                ))
            }
            (Challenge::Http01 | Challenge::TlsAlpn01, Some(_)) => {
                return Err(format!(
                    "tls.acme.dns_hook of {app} is only run for the dns-01 challenge; set challenge: dns-01 or remove dns_hook"
                ))
            }
            _ => {}
        }
        if hosts.is_empty() {
            return Err(format!(
                "tls.acme of {app} has no hosts to order a certificate for; list the app's names under hosts"
            ));
        }
        if let Some(wild) = hosts.iter().find(|h| h.contains('*')) {
            if self.challenge != Challenge::Dns01 {
                return Err(format!(
                    "tls.acme of {app} cannot order {wild} over {}: a wildcard needs the dns-01 challenge; set challenge: dns-01 with a dns_hook, or list exact names under hosts",
                    self.challenge
                ));
            }
        }
        if let Some(contact) = self.contact.iter().find(|c| !c.starts_with("mailto:")) {
            return Err(format!(
                "tls.acme.contact of {app} ({contact}) is not a mailto: URL; write it like mailto:ops@example.com"
            ));
        }
        if self.ca.as_ref().is_some_and(|ca| !ca.is_absolute()) {
            return Err(format!(
                "tls.acme.ca of {app} is not an absolute path; the supervisor reads it, so write it like /etc/cutover/acme-ca.pem"
            ));
        }
        self.http_listen().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(yaml: serde_json::Value) -> TlsSpec {
        serde_json::from_value(yaml).expect("a tls section")
    }

    #[test]
    fn exactly_one_of_files_or_acme_and_wildcards_only_over_dns_01() {
        let hosts = vec!["shop.example.com".to_owned()];
        let files = tls(serde_json::json!({"cert": "/c.pem", "key": "/c.key"}));
        assert_eq!(files.check("shop", &hosts), Ok(()));
        let acme = serde_json::json!({"directory": "https://ca.example/dir"});
        assert_eq!(
            tls(serde_json::json!({"acme": acme})).check("shop", &hosts),
            Ok(())
        );
        let cases = [
            (serde_json::json!({}), "tls of shop names no certificate"),
            (
                serde_json::json!({"cert": "/c.pem"}),
                "tls.key of shop is missing",
            ),
            (
                serde_json::json!({"cert": "/c.pem", "key": "/c.key", "acme": acme}),
                "tls of shop has both cert/key and acme",
            ),
            (
                serde_json::json!({"acme": {"directory": "https://ca/dir", "challenge": "dns-01"}}),
                "tls.acme.challenge of shop is dns-01 but no dns_hook",
            ),
            (
                serde_json::json!({"acme": {"directory": "https://ca/dir", "challenge": "dns-01", "dns_hook": "hook"}}),
                "tls.acme.dns_hook of shop (hook) is not an absolute path",
            ),
            (
                serde_json::json!({"acme": {"directory": "https://ca/dir", "dns_hook": "/hook"}}),
                "tls.acme.dns_hook of shop is only run for the dns-01 challenge",
            ),
        ];
        for (section, expected) in cases {
            let err = tls(section).check("shop", &hosts).unwrap_err();
            assert!(err.starts_with(expected), "{err}");
        }
        let wild = vec!["*.shop.example.com".to_owned()];
        let err = tls(serde_json::json!({"acme": acme}))
            .check("shop", &wild)
            .unwrap_err();
        assert!(
            err.contains("over http-01: a wildcard needs the dns-01 challenge"),
            "{err}"
        );
        let dns = serde_json::json!({"directory": "https://ca/dir", "challenge": "dns-01", "dns_hook": "/hook"});
        assert_eq!(
            tls(serde_json::json!({"acme": dns})).check("shop", &wild),
            Ok(())
        );
    }
}
