//! One order, for one host: the order (naming the certificate it replaces, where the CA takes
//! ARI), its authorization's challenge set up (see `challenges` and `dns_hook`) and announced,
//! the wait for the CA, then a fresh key, the CSR (rcgen) and the chain.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewOrder,
    OrderStatus, RetryPolicy,
};

use super::challenges::{Port, Ports, Posted};
use super::dns_hook::{self, Published};
use crate::protocol::tls::{AcmeSpec, Challenge};

/// A certificate just issued: its chain and key, PEM.
#[derive(Debug)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Why an order failed, and how long the CA asked to wait before the next (Retry-After).
#[derive(Debug)]
pub struct Failed {
    pub reason: String,
    pub retry_after: Option<Duration>,
}

impl From<String> for Failed {
    fn from(reason: String) -> Failed {
        Failed {
            reason,
            retry_after: None,
        }
    }
}

/// How long the CA may take to check a challenge, and to issue.
const CA_DEADLINE: Duration = Duration::from_secs(60);

/// Orders a certificate for `host` on `account`, answering `spec.challenge`; `replaces` names
/// the certificate it succeeds (ARI, RFC 9773), when the CA suggested the renewal.
pub async fn order(
    account: &Account,
    spec: &AcmeSpec,
    host: &str,
    ports: &Ports,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<Issued, Failed> {
    let identifiers = [Identifier::Dns(host.to_owned())];
    let mut new_order = NewOrder::new(&identifiers);
    if let Some(replaces) = replaces {
        new_order = new_order.replaces(replaces);
    }
    let mut order = account
        .new_order(&new_order)
        .await
        .map_err(failed("the new order"))?;
    // Held until the CA has checked: the table's entries, the challenge-only port, the TXT
    // records.
    let mut posted: Vec<Posted> = Vec::new();
    let mut records: Vec<Published> = Vec::new();
    let mut _port: Option<std::sync::Arc<Port>> = None;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(failed("the authorization"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(Failed::from(format!(
                    "the authorization for {host} is {other:?}"
                )))
            }
        }
        let name = match authz.identifier().identifier {
            Identifier::Dns(name) => name.clone(),
            other => return Err(Failed::from(format!("the CA asks about {other:?}"))),
        };
        let kind = match spec.challenge {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Challenge::Dns01 => ChallengeType::Dns01,
        };
        let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
            Failed::from(format!(
                "the CA offers no {kind:?} challenge for {host}; try the other challenge type"
            ))
        })?;
        let key_authorization = challenge.key_authorization();
        match spec.challenge {
            Challenge::Http01 => {
                let addr = spec.http_listen()?;
                _port = ports.hold(addr)?;
                posted.push(Posted::http(&challenge.token, key_authorization.as_str()));
            }
            Challenge::TlsAlpn01 => {
                posted.push(Posted::alpn(host, key_authorization.digest().as_ref())?)
            }
            Challenge::Dns01 => {
                let hook = spec
                    .dns_hook
                    .as_deref()
                    .ok_or_else(|| Failed::from("tls.acme.dns_hook is not set".to_owned()))?;
                let record = dns_hook::record_name(&name);
                records
                    .push(dns_hook::present(hook, &record, &key_authorization.dns_value()).await?);
                if let Some(wait) = spec.dns_wait {
                    tracing::info!(
                        "waiting {}s (tls.acme.dns_wait) for {record} to spread",
                        wait.as_secs()
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(failed("announcing the challenge"))?;
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(CA_DEADLINE);
    let status = order.poll_ready(&retries).await;
    drop(posted);
    for record in records {
        record.cleanup().await;
    }
    let status = status.map_err(failed("the CA's check"))?;
    if status != OrderStatus::Ready {
        return Err(Failed::from(format!(
            "the order for {host} is {status:?} after the CA's check"
        )));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let params =
        rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(|e| format!("{host}: {e}"))?;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("the CSR for {host}: {e}"))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(failed("finalizing the order"))?;
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .map_err(failed("the certificate"))?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Says which step failed and keeps the CA's wish to be left alone a while (rate limits).
fn failed(step: &'static str) -> impl Fn(instant_acme::Error) -> Failed {
    move |error| {
        let retry_after = match &error {
            instant_acme::Error::Timeout(Some(at)) => {
                Some(at.saturating_duration_since(std::time::Instant::now()))
            }
            _ => None,
        };
        Failed {
            reason: format!("{step}: {error}"),
            retry_after,
        }
    }
}
