//! TLS on a proxy address: the apps' certificates read from their files, the table a handshake
//! picks one from by SNI (swapped whole when an app's certificate or routes change), and the
//! rustls configuration every connection of the address shares (ALPN: `h2`, then `http/1.1`,
//! then `acme-tls/1`, whose ClientHello gets a waiting TLS-ALPN-01 certificate for its name).
//!
//! The certificate for a name is that of the app whose `hosts` fit it best, as a request's host
//! picks its app (exact before wildcard before the catch-all); a client naming no host, or one
//! no app takes, gets the catch-all app's certificate, else the first app's.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use super::challenges::{challenges, ACME_TLS_ALPN};
use crate::protocol::routes::HostPattern;

/// The address's TLS side: its acceptor and the table its certificates come from.
pub(super) struct Tls {
    pub acceptor: TlsAcceptor,
    certs: Arc<SniCerts>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("certs", &self.certs).finish()
    }
}

/// The certificates of the apps on the address, each with the hosts it is for.
#[derive(Debug, Default)]
pub(super) struct CertTable {
    pub entries: Vec<(Vec<HostPattern>, Arc<CertifiedKey>)>,
}

#[derive(Debug, Default)]
struct SniCerts {
    table: ArcSwap<CertTable>,
}

impl Tls {
    /// The address's TLS configuration, with no certificate yet.
    pub fn new() -> Tls {
        let certs = Arc::new(SniCerts::default());
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the provider's defaults are consistent")
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certs,
        }
    }

    /// Makes `table` what new handshakes pick from.
    pub fn set(&self, table: CertTable) {
        self.certs.table.store(Arc::new(table));
    }
}

impl ResolvesServerCert for SniCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // TLS-ALPN-01 (RFC 8737): the CA offers only `acme-tls/1` and must get the challenge's
        // certificate; it is never served HTTP (`connection` closes it after the handshake).
        if let Some(mut alpn) = hello.alpn() {
            if alpn.any(|p| p == ACME_TLS_ALPN) {
                return hello
                    .server_name()
                    .and_then(|name| challenges().alpn_cert(name));
            }
        }
        let table = self.table.load();
        let best = hello.server_name().and_then(|name| {
            table
                .entries
                .iter()
                .filter_map(|(hosts, cert)| {
                    let rank = hosts
                        .iter()
                        .filter(|h| h.matches(name))
                        .map(HostPattern::rank);
                    Some((rank.max()?, cert))
                })
                .max_by_key(|(rank, _)| *rank)
                .map(|(_, cert)| cert)
        });
        best.or_else(|| {
            let catch_all = table.entries.iter().find(|(hosts, _)| hosts.is_empty());
            catch_all.or(table.entries.first()).map(|(_, cert)| cert)
        })
        .cloned()
    }
}

/// aws-lc-rs, named rather than taken from the process default: the S3 client builds rustls
/// with it and reqwest with ring, so there is no single default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate chain and its key, read from PEM files; an error names the file and the fix.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| {
            format!(
                "cannot read {}: {e}; check the path and that the supervisor may read it",
                path.display()
            )
        })
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{} holds no certificate (no BEGIN CERTIFICATE block)",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| {
        format!(
            "{} is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            key.display()
        )
    })?;
    CertifiedKey::from_der(chain, private, &provider())
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "the key {} does not go with the certificate {}: {e}",
                key.display(),
                cert.display()
            )
        })
}

/// A certificate's validity period (notBefore, notAfter), from its DER.
pub fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64)
    };
    let validity = cert.validity();
    Ok((at(validity.not_before), at(validity.not_after)))
}

/// What says a certificate's files changed: each file's modification time, size and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp(Vec<Option<(SystemTime, u64, u64)>>);

impl Stamp {
    pub fn of(paths: &[&Path]) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp(
            paths
                .iter()
                .map(|p| {
                    let meta = std::fs::metadata(p).ok()?;
                    Some((meta.modified().ok()?, meta.len(), meta.ino()))
                })
                .collect(),
        )
    }
}
