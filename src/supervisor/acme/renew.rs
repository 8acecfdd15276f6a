//! One app's certificates, for as long as it keeps its `tls.acme`: what is stored is served at
//! once, a host without a good certificate is ordered, and each is renewed when a third of its
//! lifetime is left. A failure is logged once per attempt with its reason and tried again later,
//! backing off exponentially (the CA's Retry-After is honoured); the certificate in use keeps
//! serving until its successor is stored and published, in one swap.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use instant_acme::Account;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::challenges::Ports;
use super::order::{self, Failed};
use super::{account, store};
use crate::protocol::tls::AcmeSpec;
use crate::supervisor::proxy::CertSlot;

/// The first wait after a failure; doubled after each one, up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// How often a quiet follower looks whether its app is still there.
const LOOK_AGAIN: Duration = Duration::from_secs(2);

/// What `cutover status` says of an app's certificates.
pub type Said = Arc<Mutex<String>>;

/// One app's certificates being looked after.
pub struct Follower {
    pub app: String,
    pub state_dir: PathBuf,
    pub spec: AcmeSpec,
    pub hosts: Vec<String>,
    pub slot: CertSlot,
    /// Whether this supervisor may order (not before a predecessor handed over, nor after it
    /// released its apps to a successor).
    pub may_order: watch::Receiver<bool>,
    pub stop: CancellationToken,
    pub said: Said,
    pub ports: Arc<Ports>,
}

/// Where one host stands.
#[derive(Debug, Default)]
struct Host {
    stored: Option<store::Stored>,
    failures: u32,
    /// Not before then, after a failure.
    not_before: Option<Instant>,
}

impl Follower {
    pub async fn run(self) {
        let mut hosts: HashMap<String, Host> = HashMap::new();
        for name in &self.hosts {
            let mut host = Host::default();
            match store::load(&self.state_dir, name) {
                Ok(Some(stored)) => {
                    self.slot.publish(name, stored.cert.clone());
                    tracing::info!(app = %self.app, "serving the stored certificate of {name}, valid until {}", rfc3339(stored.not_after));
                    host.stored = Some(stored);
                }
                Ok(None) => {}
                Err(why) => {
                    tracing::error!(app = %self.app, "{why}; ordering a new certificate for {name}")
                }
            }
            hosts.insert(name.clone(), host);
        }
        self.say(&hosts, None);
        let mut account: Option<Account> = None;
        loop {
            let (name, due) = next_due(&hosts);
            let wait = due
                .saturating_duration_since(Instant::now())
                .min(LOOK_AGAIN);
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if !self.slot.alive() {
                return;
            }
            if Instant::now() < due || !*self.may_order.borrow() {
                continue;
            }
            let attempt = async {
                if account.is_none() {
                    account = Some(account::open(&self.state_dir, &self.spec).await?);
                }
                let account = account.as_ref().expect("opened above");
                let issued = order::order(account, &self.spec, &name, &self.ports).await?;
                store::save(&self.state_dir, &name, &issued.chain_pem, &issued.key_pem)
                    .map_err(|e| format!("cannot store the certificate of {name}: {e}"))?;
                let stored = store::load(&self.state_dir, &name)?
                    .ok_or_else(|| format!("the certificate of {name} was not stored"))?;
                Ok::<_, Failed>(stored)
            };
            let mut may_order = self.may_order.clone();
            let outcome = tokio::select! {
                () = self.stop.cancelled() => return,
                _ = may_order.wait_for(|may| !*may) => continue,
                outcome = attempt => outcome,
            };
            let host = hosts.get_mut(&name).expect("a host of the app");
            let failure = match outcome {
                Ok(stored) => {
                    if !self.slot.publish(&name, stored.cert.clone()) {
                        return;
                    }
                    tracing::info!(app = %self.app, "new certificate for {name}, valid until {}", rfc3339(stored.not_after));
                    *host = Host {
                        stored: Some(stored),
                        ..Host::default()
                    };
                    None
                }
                Err(failed) => {
                    host.failures += 1;
                    let backoff = BACKOFF_START
                        .saturating_mul(1 << host.failures.min(12).saturating_sub(1))
                        .min(BACKOFF_MAX)
                        .max(failed.retry_after.unwrap_or_default());
                    host.not_before = Some(Instant::now() + backoff);
                    tracing::warn!(app = %self.app, "ordering a certificate for {name} failed (attempt {}): {}; trying again in {}s", host.failures, failed.reason, backoff.as_secs());
                    Some(failed.reason)
                }
            };
            self.say(&hosts, failure);
        }
    }

    /// Sets what status shows: the earliest expiry, or the last failure while one is owed.
    fn say(&self, hosts: &HashMap<String, Host>, failure: Option<String>) {
        let valid = hosts
            .values()
            .map(|h| h.stored.as_ref().map(|s| s.not_after));
        let text = match (valid.collect::<Option<Vec<_>>>(), failure) {
            (Some(ends), None) if !ends.is_empty() => {
                let end = ends.into_iter().min().expect("not empty");
                format!("acme, valid until {}", rfc3339(end))
            }
            (_, Some(why)) => format!("acme, ordering: {why}"),
            _ => "acme, ordering".to_owned(),
        };
        *self.said.lock().unwrap_or_else(|p| p.into_inner()) = text;
    }
}

/// The host to order next and when: one without a certificate at once, else the one whose
/// renewal (two thirds into its lifetime) comes first, never before its backoff ends.
fn next_due(hosts: &HashMap<String, Host>) -> (String, Instant) {
    let now_sys = SystemTime::now();
    let now = Instant::now();
    hosts
        .iter()
        .map(|(name, host)| {
            let renew = match &host.stored {
                None => now,
                Some(s) => {
                    let life = s.not_after.duration_since(s.not_before).unwrap_or_default();
                    let at = s.not_after - life / 3;
                    now + at.duration_since(now_sys).unwrap_or_default()
                }
            };
            let due = host.not_before.map_or(renew, |nb| nb.max(renew));
            (name.clone(), due)
        })
        .min_by_key(|(_, due)| *due)
        .unwrap_or((String::new(), now + BACKOFF_MAX))
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}
