//! The supervisor's ACME side: which apps have certificates looked after (one `renew` follower
//! each, started again when the app's `tls.acme` or hosts change) and whether this supervisor
//! may order at all — only one of two supervisors in a hand-over does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::challenges::Ports;
use super::renew::{Follower, Said};
use crate::protocol::tls::AcmeSpec;
use crate::protocol::AppSpec;
use crate::supervisor::proxy::{CertSlot, Proxy};

/// Cheap to clone; one per supervisor.
#[derive(Debug, Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    may_order: watch::Sender<bool>,
    apps: Mutex<HashMap<String, Followed>>,
    ports: Arc<Ports>,
}

#[derive(Debug)]
struct Followed {
    spec: AcmeSpec,
    hosts: Vec<String>,
    slot: CertSlot,
    stop: CancellationToken,
    said: Said,
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Default for Manager {
    /// A manager that may not order until [`Manager::allow`].
    fn default() -> Manager {
        Manager {
            inner: Arc::new(Inner {
                may_order: watch::Sender::new(false),
                apps: Mutex::new(HashMap::new()),
                ports: Arc::new(Ports::default()),
            }),
        }
    }
}

impl Manager {
    /// Lets this supervisor order certificates (`true`: it serves the apps, no predecessor
    /// still does) or stops it (`false`: it hands the apps over); an order under way is
    /// dropped, and tried again by whoever may order.
    pub fn allow(&self, on: bool) {
        self.inner.may_order.send_replace(on);
        tracing::debug!("ACME orders {}", if on { "allowed" } else { "stopped" });
    }

    /// Looks after the certificates of `spec`'s app, served by `proxy`, if its `tls` says
    /// `acme` (else stops doing so): stored ones are served at once, missing ones ordered.
    /// Calling it again with the same section and hosts changes nothing.
    pub fn follow(&self, state_dir: &Path, spec: &AppSpec, proxy: &Proxy) {
        let app = &spec.name;
        let mut apps = lock(&self.inner.apps);
        let Some(acme) = spec.tls.as_ref().and_then(|tls| tls.acme.as_ref()) else {
            apps.remove(app);
            return;
        };
        if let Some(followed) = apps.get(app) {
            if followed.spec == *acme && followed.hosts == spec.hosts && followed.slot.alive() {
                return;
            }
        }
        let followed = Followed {
            spec: acme.clone(),
            hosts: spec.hosts.clone(),
            slot: proxy.cert_slot(),
            stop: CancellationToken::new(),
            said: Said::default(),
        };
        let follower = Follower {
            app: app.clone(),
            state_dir: state_dir.to_owned(),
            spec: acme.clone(),
            hosts: spec.hosts.clone(),
            slot: followed.slot.clone(),
            may_order: self.inner.may_order.subscribe(),
            stop: followed.stop.clone(),
            said: followed.said.clone(),
            ports: self.inner.ports.clone(),
        };
        tokio::spawn(follower.run());
        apps.insert(app.clone(), followed);
    }

    /// The socket of the challenge-only port open at `addr` for an order under way, if any, for
    /// the proxy of an app deployed there to serve instead (it answers challenges too).
    pub fn take_port(&self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        self.inner.ports.take(addr)
    }

    /// What `cutover status` says of `app`'s certificates: `None` unless they come over ACME.
    pub fn status(&self, app: &str) -> Option<String> {
        let apps = lock(&self.inner.apps);
        let followed = apps.get(app).filter(|f| f.slot.alive())?;
        let said = lock(&followed.said).clone();
        Some(said)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
