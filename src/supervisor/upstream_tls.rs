//! How the supervisor speaks to an app's instances (its [`Wire`]: HTTP/1.1, h2c, or HTTP/2 over
//! TLS), shared by the proxy and the health checks, and for `upstream: h2` the TLS client: the
//! trust `upstream_tls` names (its CA file, else the public web roots), the server name the
//! instance's certificate must be for, and ALPN `h2` as the only protocol offered — an
//! instance that does not choose it is refused, never spoken HTTP/1.1 to.
//!
//! The CA file is read when a deploy is checked (an unreadable one refuses the deploy), when an
//! instance is planned (its health checks) and when the app's proxy settings change: a CA
//! replaced on disk is taken by the next deploy.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::protocol::app::{AppSpec, Upstream, UpstreamTlsSpec};

/// What the supervisor speaks to one app's instances.
#[derive(Debug, Clone)]
pub enum Wire {
    Http1,
    /// HTTP/2 without TLS.
    H2c,
    /// HTTP/2 over TLS, verified as the app's `upstream_tls` says.
    H2(Arc<UpstreamTls>),
}

impl Wire {
    /// The wire `spec` asks for, its trust loaded now; an error names the key, the file and
    /// the fix, in one line.
    pub fn of(spec: &AppSpec) -> Result<Wire, String> {
        Ok(match spec.upstream {
            Upstream::Http1 => Wire::Http1,
            Upstream::H2c => Wire::H2c,
            Upstream::H2 => Wire::H2(UpstreamTls::load(
                &spec.name,
                &spec.upstream_tls.clone().unwrap_or_default(),
            )?),
        })
    }
}

/// The TLS client to one app's instances: the roots it trusts and the name it checks.
pub struct UpstreamTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    /// What is trusted, for messages: "the CA in /etc/cutover/grpc-ca.pem" or "the public roots".
    trust: String,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("trust", &self.trust)
            .finish()
    }
}

/// The only protocol offered to an instance.
const ALPN_H2: &[u8] = b"h2";

impl UpstreamTls {
    /// The TLS client for `app`'s instances as `spec` says; an error names the file and the fix.
    pub fn load(app: &str, spec: &UpstreamTlsSpec) -> Result<Arc<UpstreamTls>, String> {
        let mut roots = rustls::RootCertStore::empty();
        let trust = match &spec.ca {
            Some(ca) => {
                for cert in read_ca(app, ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("upstream_tls.ca of {app} ({}): {e}", ca.display()))?;
                }
                format!("the CA in {}", ca.display())
            }
            None => {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                "the public roots".to_owned()
            }
        };
        let name = spec.server_name();
        let server_name = ServerName::try_from(name.to_owned()).map_err(|_| {
            format!(
                "upstream_tls.server_name of {app} ({name:?}) is not a DNS name or an IP address"
            )
        })?;
        // aws-lc-rs named rather than the process default: both ring and aws-lc-rs are built in.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(UpstreamTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            trust,
        }))
    }

    /// The TLS handshake over `stream` to the instance at `addr`: its certificate verified for
    /// the server name, and `h2` chosen by ALPN, or an error saying which failed.
    pub async fn connect(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
    ) -> Result<TlsStream<TcpStream>, String> {
        let tls = self
            .connector
            .connect(self.server_name.clone(), stream)
            .await
            .map_err(|e| {
                format!(
                    "TLS with {addr}: {e} (trusting {} for {})",
                    self.trust,
                    self.server_name.to_str()
                )
            })?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(format!(
                "TLS with {addr}: the instance did not choose h2 by ALPN; it must serve HTTP/2 over TLS (or use upstream: http1)"
            ));
        }
        Ok(tls)
    }
}

/// The certificates in `app`'s CA file, at least one.
fn read_ca(app: &str, ca: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(ca).map_err(|e| {
        format!(
            "upstream_tls.ca of {app}: cannot read {}: {e}; check the path and that the supervisor may read it",
            ca.display()
        )
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("upstream_tls.ca of {app}: {} is not PEM: {e}", ca.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "upstream_tls.ca of {app}: {} holds no certificate (no BEGIN CERTIFICATE block)",
            ca.display()
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_is_named_in_one_line() {
        let spec = UpstreamTlsSpec {
            ca: Some("/nonexistent/ca.pem".into()),
            server_name: None,
        };
        let err = UpstreamTls::load("grpc", &spec).unwrap_err();
        assert!(
            err.starts_with("upstream_tls.ca of grpc: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        let empty = tempfile::NamedTempFile::new().expect("a temp file");
        let spec = UpstreamTlsSpec {
            ca: Some(empty.path().to_owned()),
            server_name: None,
        };
        let err = UpstreamTls::load("grpc", &spec).unwrap_err();
        assert!(err.contains("holds no certificate"), "{err}");
    }

    /// A TLS server on 127.0.0.1 for `localhost` offering `alpn`, and the CA file that trusts it.
    async fn server(alpn: &[&[u8]]) -> (SocketAddr, tempfile::NamedTempFile) {
        let key = rcgen::KeyPair::generate().expect("a key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("a certificate");
        let ca = tempfile::NamedTempFile::new().expect("a temp file");
        std::fs::write(ca.path(), cert.pem()).expect("write the CA");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let private = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], private)
            .expect("a server config");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    // Hold the connection until the client is done with it.
                    let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut [0u8; 1]).await;
                }
            }
        });
        (addr, ca)
    }

    async fn handshake(addr: SocketAddr, ca: &Path) -> Result<(), String> {
        let spec = UpstreamTlsSpec {
            ca: Some(ca.to_owned()),
            server_name: None,
        };
        let tls = UpstreamTls::load("grpc", &spec).expect("loaded");
        let stream = TcpStream::connect(addr).await.unwrap();
        tls.connect(stream, addr).await.map(drop)
    }

    #[tokio::test]
    async fn only_an_instance_that_chooses_h2_is_spoken_to() {
        let (addr, ca) = server(&[b"h2", b"http/1.1"]).await;
        handshake(addr, ca.path()).await.expect("h2 chosen");
        // A server that knows ALPN but not h2 refuses the handshake; one that ignores ALPN
        // completes it, and is refused here.
        let (addr, ca) = server(&[b"http/1.1"]).await;
        let err = handshake(addr, ca.path()).await.unwrap_err();
        assert!(err.contains("NoApplicationProtocol"), "{err}");
        let (addr, ca) = server(&[]).await;
        let err = handshake(addr, ca.path()).await.unwrap_err();
        assert!(err.contains("did not choose h2 by ALPN"), "{err}");
    }

    #[test]
    fn the_public_roots_serve_a_named_public_host() {
        let spec = UpstreamTlsSpec {
            ca: None,
            server_name: Some("grpc.example.com".to_owned()),
        };
        let tls = UpstreamTls::load("grpc", &spec).expect("loaded");
        assert_eq!(tls.trust, "the public roots");
        assert_eq!(tls.server_name.to_str(), "grpc.example.com");
    }
}
