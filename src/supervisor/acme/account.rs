//! The ACME account of one directory: its HTTPS client (rustls with aws-lc-rs named, the public
//! roots of webpki-roots plus the manifest's `ca`), and the account itself, created once and
//! kept in `STATE/acme/` (see `store`), then restored from there.

use std::path::Path;

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{Account, AccountCredentials, BodyWrapper, ExternalAccountKey, NewAccount};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::store;
use crate::protocol::tls::AcmeSpec;

/// The account for `spec.directory`: the stored one, else a new one (then stored).
pub async fn open(state_dir: &Path, spec: &AcmeSpec) -> Result<Account, String> {
    let directory = &spec.directory;
    if let Some(json) = store::load_account(state_dir, directory)? {
        match serde_json::from_slice::<AccountCredentials>(&json) {
            Ok(credentials) => {
                return Account::builder_with_http(http_client(spec)?)
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| format!("cannot reach the ACME directory {directory}: {e}"));
            }
            Err(e) => tracing::error!(
                "{} is not an ACME account ({e}); creating a new one",
                store::account_path(state_dir, directory).display()
            ),
        }
    }
    let contact: Vec<&str> = spec.contact.iter().map(String::as_str).collect();
    let eab = match &spec.eab {
        Some(eab) => {
            use base64::Engine;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(eab.hmac_key.trim_end_matches('='))
                .map_err(|e| format!("tls.acme.eab.hmac_key is not base64url: {e}"))?;
            Some(ExternalAccountKey::new(eab.kid.clone(), &key))
        }
        None => None,
    };
    let (account, credentials) = Account::builder_with_http(http_client(spec)?)
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.clone(),
            eab.as_ref(),
        )
        .await
        .map_err(|e| format!("cannot create an account at the ACME directory {directory}: {e}"))?;
    let json = serde_json::to_vec_pretty(&credentials).map_err(|e| e.to_string())?;
    store::save_account(state_dir, directory, &json).map_err(|e| {
        format!(
            "cannot store the ACME account in {}: {e}",
            store::account_path(state_dir, directory).display()
        )
    })?;
    tracing::info!("created an ACME account at {directory}");
    Ok(account)
}

/// The client the account talks to its directory with.
fn http_client(spec: &AcmeSpec) -> Result<Box<dyn instant_acme::HttpClient>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &spec.ca {
        let pem = std::fs::read(ca)
            .map_err(|e| format!("cannot read tls.acme.ca {}: {e}", ca.display()))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("tls.acme.ca {} is not PEM: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("tls.acme.ca {}: {e}", ca.display()))?;
        }
    }
    // Named rather than the process default: both ring and aws-lc-rs are built in.
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    let client: Client<_, BodyWrapper<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(client))
}
