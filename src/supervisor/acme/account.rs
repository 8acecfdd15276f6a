//! The ACME account of one directory: its HTTPS client (rustls with aws-lc-rs named, the public
//! roots of webpki-roots plus the manifest's `ca`; it keeps the CA's last `Retry-After` on a
//! 429 or 503, which instant-acme's errors do not carry), and the account itself, created once
//! and kept in `STATE/acme/` (see `store`), then restored from there.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, BodyWrapper, BytesResponse, ExternalAccountKey, HttpClient,
    NewAccount,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::store;
use crate::protocol::tls::AcmeSpec;

/// An account, and what its CA last said about coming back later.
pub struct Opened {
    pub account: Account,
    pub come_back: ComeBack,
}

/// The latest `Retry-After` the CA sent with a 429 (rate limited) or 503.
#[derive(Debug, Clone, Default)]
pub struct ComeBack(Arc<Mutex<Option<SystemTime>>>);

impl ComeBack {
    /// How long from now the CA asked to be left alone, in whole seconds rounded up,
    /// forgetting it; `None` if it did not.
    pub fn take(&self) -> Option<Duration> {
        let at = self.0.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        Some(Duration::from_secs(left.as_secs_f64().ceil() as u64))
    }
}

/// The account for `spec.directory`: the stored one, else a new one (then stored).
pub async fn open(state_dir: &Path, spec: &AcmeSpec) -> Result<Opened, String> {
    let come_back = ComeBack::default();
    let account = account(state_dir, spec, &come_back).await?;
    Ok(Opened { account, come_back })
}

async fn account(
    state_dir: &Path,
    spec: &AcmeSpec,
    come_back: &ComeBack,
) -> Result<Account, String> {
    let directory = &spec.directory;
    if let Some(json) = store::load_account(state_dir, directory)? {
        match serde_json::from_slice::<AccountCredentials>(&json) {
            Ok(credentials) => {
                return Account::builder_with_http(http_client(spec, come_back)?)
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
    let (account, credentials) = Account::builder_with_http(http_client(spec, come_back)?)
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
fn http_client(spec: &AcmeSpec, come_back: &ComeBack) -> Result<Box<dyn HttpClient>, String> {
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
    Ok(Box::new(Heeding {
        client: Box::new(client),
        come_back: come_back.clone(),
    }))
}

/// A client that keeps the CA's `Retry-After` when it says "not now".
struct Heeding {
    client: Box<dyn HttpClient>,
    come_back: ComeBack,
}

impl HttpClient for Heeding {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let answer = self.client.request(req);
        let come_back = self.come_back.clone();
        Box::pin(async move {
            let answer = answer.await?;
            let status = answer.parts.status;
            if status == http::StatusCode::TOO_MANY_REQUESTS
                || status == http::StatusCode::SERVICE_UNAVAILABLE
            {
                let at = answer.parts.headers.get(http::header::RETRY_AFTER);
                if let Some(at) = at.and_then(|v| v.to_str().ok()).and_then(retry_after) {
                    *come_back.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
                }
            }
            Ok(answer)
        })
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 section 10.2.3).
fn retry_after(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    match u64::from_str(value) {
        Ok(secs) => Some(SystemTime::now() + Duration::from_secs(secs)),
        Err(_) => httpdate::HttpDate::from_str(value)
            .ok()
            .map(SystemTime::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let soon = retry_after(" 120 ").expect("seconds");
        let left = soon.duration_since(SystemTime::now()).expect("ahead");
        assert!(left > Duration::from_secs(110) && left <= Duration::from_secs(120));
        let date = retry_after("Fri, 31 Dec 1999 23:59:59 GMT").expect("a date");
        assert_eq!(
            date.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            946_684_799
        );
        assert_eq!(retry_after("soon"), None);
    }
}
