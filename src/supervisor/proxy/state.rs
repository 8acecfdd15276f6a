//! What a proxy's worker threads share with its handles, for one listening address: the open
//! downstream connections, the settings each new connection reads (PROXY protocol, TCP mode,
//! TLS and its certificates, h2c, client limits), and the sites table, which tells the app (`site::SiteState`) a request is for
//! by its host and path.
//!
//! Each worker reads its own copy of the table (as it does of each route), swapped whole when an
//! app joins, leaves or changes its routes; the `sites` lock is taken only then. With one app
//! taking any host and every path, the table says so and no request is looked at.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

use super::downstream::Downstream;
use super::limits::{AtomicClientLimits, ClientLimits};
use super::site::{lock, SiteState};
use super::tls::{CertTable, Tls};
use crate::protocol::routes::{collision_message, request_host, HostPattern, Routes};

/// What every connection task shares with the address's handles.
#[derive(Debug)]
pub(super) struct ProxyState {
    /// The open downstream (client) connections, for `close`.
    pub(super) downstream: Arc<Downstream>,
    /// Connections start with a PROXY protocol header (see `set_proxy_protocol`).
    pub(super) proxy_protocol: AtomicBool,
    /// Connections are piped whole to one instance (see `set_tcp`).
    pub(super) tcp: AtomicBool,
    /// What a client may hold and for how long (see `set_client_limits`).
    pub(super) limits: AtomicClientLimits,
    /// The address's TLS configuration, used while `tls_on`: some app has a certificate.
    pub(super) tls: Tls,
    pub(super) tls_on: AtomicBool,
    /// Plain connections that open with HTTP/2's preface are served HTTP/2 (see `set_h2c`).
    pub(super) h2c: AtomicBool,
    /// One copy of the sites table per worker thread.
    tables: Box<[SitesLane]>,
    /// The sites as their handles set them; the tables and the settings above are made of them.
    sites: Mutex<Vec<SiteEntry>>,
}

/// One worker's copy of the sites table, on a cache line of its own.
#[derive(Debug)]
#[repr(align(128))]
pub(super) struct SitesLane {
    pub table: ArcSwap<Sites>,
}

/// One app on the address, as its handle set it.
#[derive(Debug, Clone)]
struct SiteEntry {
    app: String,
    routes: Routes,
    state: Arc<SiteState>,
    wants: Wants,
    cert: Option<Arc<CertifiedKey>>,
    /// Certificates of single hosts (ordered over ACME), before `cert` for their names.
    host_certs: Vec<(HostPattern, Arc<CertifiedKey>)>,
}

/// The connection settings one app asks for; the address serves the most generous of them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Wants {
    pub proxy_protocol: bool,
    pub tcp: bool,
    pub h2c: bool,
    pub limits: Option<ClientLimits>,
    /// The address speaks TLS even before the app has a certificate (one ordered over ACME).
    pub tls: bool,
}

/// What a request picks its app from.
#[derive(Debug, Default)]
pub(super) struct Sites {
    entries: Vec<(Routes, Arc<SiteState>)>,
    /// The only app, when it takes any host and every path.
    only: Option<Arc<SiteState>>,
}

impl Sites {
    /// The app a request for `uri` with `headers` goes to: the best fit (see
    /// `protocol::routes`); `None` when no app on the address takes it.
    #[inline]
    pub fn pick(&self, uri: &http::Uri, headers: &http::HeaderMap) -> Option<&Arc<SiteState>> {
        if let Some(only) = &self.only {
            return Some(only);
        }
        let host = request_host(uri, headers);
        let path = uri.path();
        self.entries
            .iter()
            .filter_map(|(routes, state)| Some((routes.fit(host, path)?, state)))
            .max_by_key(|(fit, _)| *fit)
            .map(|(_, state)| state)
    }

    /// The first app, for what carries no host (TCP mode, which never shares its address).
    pub fn first(&self) -> Option<&Arc<SiteState>> {
        self.entries.first().map(|(_, state)| state)
    }
}

impl ProxyState {
    /// The state of an address served by `workers` worker threads, with no app yet.
    pub fn new(workers: usize) -> ProxyState {
        ProxyState {
            downstream: Arc::new(Downstream::new(workers)),
            proxy_protocol: AtomicBool::new(false),
            tcp: AtomicBool::new(false),
            limits: AtomicClientLimits::new(ClientLimits::default()),
            tls: Tls::new(),
            tls_on: AtomicBool::new(false),
            h2c: AtomicBool::new(false),
            tables: (0..workers)
                .map(|_| SitesLane {
                    table: ArcSwap::from_pointee(Sites::default()),
                })
                .collect(),
            sites: Mutex::new(Vec::new()),
        }
    }

    /// `worker`'s copy of the sites table.
    #[inline]
    pub fn sites(&self, worker: usize) -> &SitesLane {
        &self.tables[worker % self.tables.len()]
    }

    /// Worker threads serving the address.
    pub fn workers(&self) -> usize {
        self.tables.len()
    }

    /// Adds `state` as `app`, taking `routes`, unless another app claims the same.
    pub fn add_site(&self, app: &str, routes: Routes, state: Arc<SiteState>) -> Result<(), String> {
        let mut sites = lock(&self.sites);
        check_collisions(&sites, app, &routes, &state)?;
        sites.push(SiteEntry {
            app: app.to_owned(),
            routes,
            state,
            wants: Wants::default(),
            cert: None,
            host_certs: Vec::new(),
        });
        self.publish(&sites);
        Ok(())
    }

    /// Gives `state`'s app a new name and routes, unless another app claims the same routes.
    pub fn set_routes(
        &self,
        state: &Arc<SiteState>,
        app: &str,
        routes: Routes,
    ) -> Result<(), String> {
        let mut sites = lock(&self.sites);
        check_collisions(&sites, app, &routes, state)?;
        if let Some(entry) = sites.iter_mut().find(|e| Arc::ptr_eq(&e.state, state)) {
            entry.app = app.to_owned();
            entry.routes = routes;
        }
        self.publish(&sites);
        Ok(())
    }

    /// Changes what `state`'s app asks of connections; the address serves the most generous.
    /// Nothing is published when it asks what it asked already (every route update asks again).
    pub fn want(&self, state: &Arc<SiteState>, change: impl FnOnce(&mut Wants)) {
        let mut sites = lock(&self.sites);
        let Some(entry) = sites.iter_mut().find(|e| Arc::ptr_eq(&e.state, state)) else {
            return;
        };
        let before = entry.wants;
        change(&mut entry.wants);
        if entry.wants != before {
            self.publish(&sites);
        }
    }

    /// Makes `cert` the certificate of `state`'s app (`None`: it has none); the address speaks
    /// TLS to new connections while any app on it has one.
    pub fn set_cert(&self, state: &Arc<SiteState>, cert: Option<Arc<CertifiedKey>>) {
        let mut sites = lock(&self.sites);
        if let Some(entry) = sites.iter_mut().find(|e| Arc::ptr_eq(&e.state, state)) {
            entry.cert = cert;
        }
        self.publish(&sites);
    }

    /// Makes `cert` the certificate `state`'s app serves for `host` (an exact name): published
    /// whole, so a handshake gets the old one or the new one; `None` takes it away.
    pub fn set_host_cert(
        &self,
        state: &Arc<SiteState>,
        host: &str,
        cert: Option<Arc<CertifiedKey>>,
    ) {
        let Ok(pattern) = HostPattern::parse(host) else {
            return;
        };
        let mut sites = lock(&self.sites);
        if let Some(entry) = sites.iter_mut().find(|e| Arc::ptr_eq(&e.state, state)) {
            entry.host_certs.retain(|(p, _)| *p != pattern);
            if let Some(cert) = cert {
                entry.host_certs.push((pattern, cert));
            }
        }
        self.publish(&sites);
    }

    /// The certificates `state`'s app serves, each with the names it is served for: its hosts
    /// for its own certificate, one host for one ordered over ACME.
    pub fn certificates(
        &self,
        state: &Arc<SiteState>,
    ) -> Vec<(Vec<HostPattern>, Arc<CertifiedKey>)> {
        let sites = lock(&self.sites);
        let Some(entry) = sites.iter().find(|e| Arc::ptr_eq(&e.state, state)) else {
            return Vec::new();
        };
        let own = entry.cert.clone().map(|c| (entry.routes.hosts.clone(), c));
        let hosts = entry
            .host_certs
            .iter()
            .map(|(h, c)| (vec![h.clone()], c.clone()));
        hosts.chain(own).collect()
    }

    /// Forgets the certificates of single hosts of `state`'s app.
    pub fn clear_host_certs(&self, state: &Arc<SiteState>) {
        let mut sites = lock(&self.sites);
        if let Some(entry) = sites.iter_mut().find(|e| Arc::ptr_eq(&e.state, state)) {
            entry.host_certs.clear();
        }
        self.publish(&sites);
    }

    /// Takes `state`'s app off the address: its requests find no app from now on.
    pub fn remove_site(&self, state: &Arc<SiteState>) {
        let mut sites = lock(&self.sites);
        sites.retain(|e| !Arc::ptr_eq(&e.state, state));
        self.publish(&sites);
    }

    /// The apps on the address and their routes, in the order they came.
    pub fn routes(&self) -> Vec<(String, Routes)> {
        lock(&self.sites)
            .iter()
            .map(|e| (e.app.clone(), e.routes.clone()))
            .collect()
    }

    /// Makes `sites` every worker's table and the address's settings; the caller holds the lock.
    fn publish(&self, sites: &[SiteEntry]) {
        let only = match sites {
            [one] if one.routes.is_catch_all() => Some(one.state.clone()),
            _ => None,
        };
        for lane in self.tables.iter() {
            lane.table.store(Arc::new(Sites {
                entries: sites
                    .iter()
                    .map(|e| (e.routes.clone(), e.state.clone()))
                    .collect(),
                only: only.clone(),
            }));
        }
        let hosts = sites.iter().flat_map(|e| {
            e.host_certs
                .iter()
                .map(|(host, cert)| (vec![host.clone()], cert.clone()))
        });
        let certs: Vec<_> = hosts
            .chain(
                sites
                    .iter()
                    .filter_map(|e| Some((e.routes.hosts.clone(), e.cert.clone()?))),
            )
            .collect();
        let wants_tls = sites.iter().any(|e| e.wants.tls);
        self.tls_on
            .store(wants_tls || !certs.is_empty(), Ordering::Relaxed);
        self.tls.set(CertTable { entries: certs });
        let wants = sites.iter().map(|e| e.wants);
        self.h2c
            .store(wants.clone().any(|w| w.h2c), Ordering::Relaxed);
        self.proxy_protocol
            .store(wants.clone().any(|w| w.proxy_protocol), Ordering::Relaxed);
        self.tcp
            .store(wants.clone().any(|w| w.tcp), Ordering::Relaxed);
        if let Some(limits) = wants.filter_map(|w| w.limits).reduce(most_generous) {
            self.limits.set(limits);
        }
    }
}

/// The limits that hold back neither app: the larger of each, the lower minimum rate.
fn most_generous(a: ClientLimits, b: ClientLimits) -> ClientLimits {
    ClientLimits {
        max_connections: a.max_connections.max(b.max_connections),
        idle_timeout: a.idle_timeout.max(b.idle_timeout),
        body_timeout: a.body_timeout.max(b.body_timeout),
        send_timeout: a.send_timeout.max(b.send_timeout),
        min_rate: a.min_rate.min(b.min_rate),
    }
}

/// Refuses `routes` for `app` (at `state`) where another app on the address claims the same.
fn check_collisions(
    sites: &[SiteEntry],
    app: &str,
    routes: &Routes,
    state: &Arc<SiteState>,
) -> Result<(), String> {
    for other in sites.iter().filter(|e| !Arc::ptr_eq(&e.state, state)) {
        if let Some(route) = routes.collision(&other.routes) {
            return Err(collision_message(app, &other.app, &route));
        }
    }
    Ok(())
}
