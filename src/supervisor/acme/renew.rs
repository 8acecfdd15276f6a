//! One app's certificates, for as long as it keeps its `tls.acme`: what is stored is served at
//! once, a host without a good certificate is ordered, and each is renewed at the time its CA
//! suggests (ARI, asked again when the CA says) or, from a CA without ARI, when a third of its
//! lifetime is left. A failure is logged once per attempt with its reason and tried again later,
//! backing off exponentially or for as long as the CA's Retry-After asks; the certificate in use
//! keeps serving until its successor is stored and published, in one swap.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::account::{self, Opened};
use super::ari::{self, Asked, Suggestion};
use super::challenges::Ports;
use super::order::{self, Failed};
use super::store;
use crate::protocol::tls::AcmeSpec;
use crate::supervisor::proxy::CertSlot;

/// The first wait after a failure; doubled after each one, up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// How often a quiet follower looks whether its app is still there.
const LOOK_AGAIN: Duration = Duration::from_secs(2);
/// How long to go by the lifetime rule after the CA could not say when to renew.
const ASK_AFTER_FAILURE: Duration = Duration::from_secs(3600);

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
    /// The CA's renewal time for the stored certificate (ARI).
    suggested: Option<Suggestion>,
    /// When to ask the CA for it (again); never from a CA without ARI.
    ask_at: Option<Instant>,
}

impl Host {
    fn stored(stored: store::Stored) -> Host {
        Host {
            stored: Some(stored),
            ask_at: Some(Instant::now()),
            ..Host::default()
        }
    }
}

/// What comes next for one host.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Order(String),
    /// Ask the CA when to renew.
    Ask(String),
}

impl Follower {
    pub async fn run(self) {
        let mut hosts: HashMap<String, Host> = HashMap::new();
        for name in &self.hosts {
            let host = match store::load(&self.state_dir, name) {
                Ok(Some(stored)) => {
                    self.slot.publish(name, stored.cert.clone());
                    tracing::info!(app = %self.app, "serving the stored certificate of {name}, valid until {}", rfc3339(stored.not_after));
                    Host::stored(stored)
                }
                Ok(None) => Host::default(),
                Err(why) => {
                    tracing::error!(app = %self.app, "{why}; ordering a new certificate for {name}");
                    Host::default()
                }
            };
            hosts.insert(name.clone(), host);
        }
        self.say(&hosts, None);
        let mut opened: Option<Opened> = None;
        // Until the directory shows it has no ARI.
        let mut ari = true;
        loop {
            let (step, due) = next_step(&hosts);
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
            let mut may_order = self.may_order.clone();
            match step {
                Step::Ask(name) => {
                    let asked = tokio::select! {
                        () = self.stop.cancelled() => return,
                        _ = may_order.wait_for(|may| !*may) => continue,
                        asked = self.ask(&mut opened, &hosts[&name]) => asked,
                    };
                    let host = hosts.get_mut(&name).expect("a host of the app");
                    match asked {
                        Asked::Suggested(suggestion) => {
                            tracing::info!(app = %self.app, "the CA suggests renewing {name} at {}{}", rfc3339(suggestion.renew_at), suggestion.explanation.as_deref().map(|url| format!(" ({url})")).unwrap_or_default());
                            host.ask_at = Some(Instant::now() + suggestion.ask_again);
                            host.suggested = Some(suggestion);
                        }
                        Asked::Unsupported => {
                            tracing::debug!(app = %self.app, "the CA offers no renewal information; renewing a third before expiry");
                            ari = false;
                            hosts.values_mut().for_each(|h| h.ask_at = None);
                        }
                        Asked::Failed(why) => {
                            tracing::warn!(app = %self.app, "{name}: {why}; renewing by the certificate's lifetime until the CA answers");
                            host.ask_at = Some(Instant::now() + ASK_AFTER_FAILURE);
                        }
                    }
                    self.say(&hosts, None);
                }
                Step::Order(name) => {
                    let host = &hosts[&name];
                    // Named once: a CA that refuses the replacement gets a plain order next.
                    let replaces = host
                        .suggested
                        .as_ref()
                        .filter(|_| host.failures == 0)
                        .map(|s| s.replaces.clone());
                    let outcome = tokio::select! {
                        () = self.stop.cancelled() => return,
                        _ = may_order.wait_for(|may| !*may) => continue,
                        outcome = self.order(&mut opened, &name, replaces) => outcome,
                    };
                    let host = hosts.get_mut(&name).expect("a host of the app");
                    let failure = match outcome {
                        Ok(stored) => {
                            if !self.slot.publish(&name, stored.cert.clone()) {
                                return;
                            }
                            tracing::info!(app = %self.app, "new certificate for {name}, valid until {}", rfc3339(stored.not_after));
                            *host = Host::stored(stored);
                            if !ari {
                                host.ask_at = None;
                            }
                            None
                        }
                        Err(failed) => {
                            host.failures += 1;
                            let come_back = opened.as_ref().and_then(|o| o.come_back.take());
                            let backoff = BACKOFF_START
                                .saturating_mul(1 << host.failures.min(12).saturating_sub(1))
                                .min(BACKOFF_MAX)
                                .max(failed.retry_after.or(come_back).unwrap_or_default());
                            host.not_before = Some(Instant::now() + backoff);
                            tracing::warn!(app = %self.app, "ordering a certificate for {name} failed (attempt {}): {}; trying again in {}s", host.failures, failed.reason, backoff.as_secs());
                            Some(format!(
                                "{}; trying again in {}s",
                                failed.reason,
                                backoff.as_secs()
                            ))
                        }
                    };
                    self.say(&hosts, failure);
                }
            }
        }
    }

    /// The account, opened on first use.
    async fn opened<'a>(&self, opened: &'a mut Option<Opened>) -> Result<&'a Opened, String> {
        if opened.is_none() {
            *opened = Some(account::open(&self.state_dir, &self.spec).await?);
        }
        Ok(opened.as_ref().expect("opened above"))
    }

    async fn ask(&self, opened: &mut Option<Opened>, host: &Host) -> Asked {
        let Some(leaf) = host.stored.as_ref().and_then(|s| s.cert.cert.first()) else {
            return Asked::Failed("no certificate to ask about".to_owned());
        };
        match self.opened(opened).await {
            Ok(opened) => ari::ask(&opened.account, leaf).await,
            Err(why) => Asked::Failed(why),
        }
    }

    /// One order for `name`, stored and read back.
    async fn order(
        &self,
        opened: &mut Option<Opened>,
        name: &str,
        replaces: Option<instant_acme::CertificateIdentifier<'static>>,
    ) -> Result<store::Stored, Failed> {
        let opened = self.opened(opened).await?;
        opened.come_back.take();
        let issued = order::order(&opened.account, &self.spec, name, &self.ports, replaces).await?;
        store::save(&self.state_dir, name, &issued.chain_pem, &issued.key_pem)
            .map_err(|e| format!("cannot store the certificate of {name}: {e}"))?;
        let stored = store::load(&self.state_dir, name)?
            .ok_or_else(|| format!("the certificate of {name} was not stored"))?;
        Ok(stored)
    }

    /// Sets what status shows: the earliest expiry and the next renewal the CA suggested, or
    /// the last failure while one is owed.
    fn say(&self, hosts: &HashMap<String, Host>, failure: Option<String>) {
        let valid = hosts
            .values()
            .map(|h| h.stored.as_ref().map(|s| s.not_after));
        let text = match (valid.collect::<Option<Vec<_>>>(), failure) {
            (Some(ends), None) if !ends.is_empty() => {
                let end = ends.into_iter().min().expect("not empty");
                let suggested = hosts
                    .values()
                    .filter_map(|h| h.suggested.as_ref().map(|s| s.renew_at))
                    .min();
                match suggested {
                    Some(at) => format!(
                        "acme, valid until {}, renewing at {} (the CA's window)",
                        rfc3339(end),
                        rfc3339(at)
                    ),
                    None => format!("acme, valid until {}", rfc3339(end)),
                }
            }
            (_, Some(why)) => format!("acme, ordering: {why}"),
            _ => "acme, ordering".to_owned(),
        };
        *self.said.lock().unwrap_or_else(|p| p.into_inner()) = text;
    }
}

/// The next step and when: ordering a host without a certificate at once, else renewing the
/// one due first (at the CA's time, or two thirds into its lifetime) but never before its
/// backoff ends, or asking the CA when to renew, whichever comes first.
fn next_step(hosts: &HashMap<String, Host>) -> (Step, Instant) {
    let now_sys = SystemTime::now();
    let now = Instant::now();
    let at = |when: SystemTime| now + when.duration_since(now_sys).unwrap_or_default();
    hosts
        .iter()
        .flat_map(|(name, host)| {
            let renew = match (&host.stored, &host.suggested) {
                (None, _) => now,
                (Some(_), Some(suggested)) => at(suggested.renew_at),
                (Some(s), None) => {
                    let life = s.not_after.duration_since(s.not_before).unwrap_or_default();
                    at(s.not_after - life / 3)
                }
            };
            let due = host.not_before.map_or(renew, |nb| nb.max(renew));
            let ask = host.ask_at.map(|ask| (Step::Ask(name.clone()), ask));
            std::iter::once((Step::Order(name.clone()), due)).chain(ask)
        })
        .min_by_key(|(_, due)| *due)
        .unwrap_or((Step::Order(String::new()), now + BACKOFF_MAX))
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}
