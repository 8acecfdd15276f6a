//! `Proxy`: one app's handle on the proxy. It names the app's site on a listening address (its
//! route, counters, access log, hold) and keeps the address (`front::Front`) alive, which
//! other apps may share, routed by host and path. Dropping the last handle of an address closes
//! it; dropping one of several takes only its app off the address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rustls::sign::CertifiedKey;

use super::access_log::LineLosses;
use super::front::Front;
use super::limits::ClientLimits;
use super::route::{BackendStats, Route, SlotStats};
use super::site::{lock, SiteState};
use super::state::ProxyState;
use super::tls::{self, Stamp};
use super::workers;
use crate::protocol::app::{TlsSpec, Upstream, UpstreamTlsSpec};
use crate::protocol::routes::Routes;
use crate::supervisor::upstream_tls::UpstreamTls;

/// A running proxy for one app; dropping it takes the app off its address, and the last app's
/// drop closes the listener and stops its worker threads (with the connections still open on
/// them) before it returns.
#[derive(Debug)]
pub struct Proxy {
    pub local_addr: SocketAddr,
    front: Arc<Front>,
    site: Arc<SiteState>,
}

impl Proxy {
    /// Binds `listen` and starts serving (with an empty route: requests get 503 until one is set)
    /// on one worker thread per core, for an app that takes any host and every path.
    pub async fn bind(listen: SocketAddr) -> std::io::Result<Proxy> {
        Proxy::from_listener(Front::bind(listen)?)
    }

    /// Binds `listen` like `bind`, but accepts nothing before `start_accepting`: what must hold
    /// for the first connection (a certificate) is set first.
    pub fn bind_held(listen: SocketAddr) -> std::io::Result<Proxy> {
        Proxy::from_listener_held(Front::bind(listen)?)
    }

    /// Serves on a listener bound elsewhere (handed over by a previous supervisor, or bound
    /// before dropping privileges), on one worker thread per core.
    pub fn from_listener(listener: std::net::TcpListener) -> std::io::Result<Proxy> {
        Proxy::with_workers(listener, workers::default_count(), false)
    }

    /// Like `from_listener`, but accepts nothing before `start_accepting`: a restarted
    /// supervisor's clients wait in the socket's backlog until the route is set, rather than
    /// getting 503s from an empty one.
    pub fn from_listener_held(listener: std::net::TcpListener) -> std::io::Result<Proxy> {
        Proxy::with_workers(listener, workers::default_count(), true)
    }

    /// Serves on `listener` with `workers` threads (at least one), each running its own event
    /// loop and accepting from the same socket; `held`: not before `start_accepting`.
    pub fn with_workers(
        listener: std::net::TcpListener,
        workers: usize,
        held: bool,
    ) -> std::io::Result<Proxy> {
        let front = Arc::new(Front::start(listener, workers, held)?);
        let site = Arc::new(SiteState::new(front.state.workers()));
        front
            .state
            .add_site("", Routes::default(), site.clone())
            .map_err(std::io::Error::other)?;
        Ok(Proxy {
            local_addr: front.local_addr,
            front,
            site,
        })
    }

    /// Another app on this proxy's address, taking `routes` (with an empty route: its requests
    /// get 503 until one is set); refused, naming both apps, where another app on the address
    /// takes the same routes.
    pub fn join(&self, app: &str, routes: Routes) -> Result<Proxy, String> {
        let site = Arc::new(SiteState::new(self.front.state.workers()));
        self.front.state.add_site(app, routes, site.clone())?;
        Ok(Proxy {
            local_addr: self.local_addr,
            front: self.front.clone(),
            site,
        })
    }

    /// Names this handle's app and sets the requests it takes on the address; refused, naming
    /// both apps, where another app on the address takes the same.
    pub fn set_routes(&self, app: &str, routes: Routes) -> Result<(), String> {
        self.front.state.set_routes(&self.site, app, routes)
    }

    /// Every app on the address, with its routes, in the order they came.
    pub fn routes(&self) -> Vec<(String, Routes)> {
        self.front.state.routes()
    }

    /// Starts the accept loops of a proxy made by `from_listener_held`; does nothing otherwise.
    pub fn start_accepting(&self) {
        self.front.start_accepting();
    }

    /// Stops accepting connections on the address (every app's); connections already open
    /// finish their requests.
    pub fn shutdown(&self) {
        self.front.shutdown();
    }

    /// Stops accepting and returns once no worker accepts any more, so that another proxy can
    /// serve a copy of the socket without this one taking its connections.
    pub async fn stop_accepting(&self) {
        self.front.stop_accepting().await;
    }

    /// A copy of the listening socket (the same socket under a new descriptor), to hand to the
    /// next supervisor: the socket stays open, and connections wait in its backlog, as long as
    /// any copy is open. Fails after `shutdown`.
    pub fn listener(&self) -> std::io::Result<std::net::TcpListener> {
        self.front.listener()
    }

    /// Stops accepting on the address, then lets go of every client connection without failing
    /// a request: each gets `Connection: close` on its next response, idle ones are closed.
    /// Returns when all are closed, or after `timeout` (shutting down the rest); the number still
    /// open then. Every app on the address is closed with it.
    pub async fn close(&self, timeout: Duration) -> u64 {
        self.front.close(timeout).await
    }

    /// Replaces the route atomically: new requests go to the new backends from now on; requests
    /// in flight on the old ones finish there.
    pub fn set_route(&self, route: Route) {
        self.site.set_route(route);
    }

    /// While no instance can take a new request (or TCP connection) — none is routed, or none
    /// accepts connections — it waits up to `hold` for a route that has one, instead of being
    /// answered 503 or 502 (closed) at once. Zero, the default: no waiting.
    pub fn set_hold(&self, hold: Duration) {
        let ms = hold.as_millis().min(u64::MAX as u128) as u64;
        self.site.hold_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether every new connection must start with a PROXY protocol header (from a trusted load
    /// balancer in front), whose client address then stands for the connection's peer. An
    /// address shared by several apps expects it when any of them does.
    pub fn set_proxy_protocol(&self, on: bool) {
        self.front
            .state
            .want(&self.site, |wants| wants.proxy_protocol = on);
    }

    /// Answers every request for the app on this address with `308 Permanent Redirect` to the
    /// same URL over HTTPS on `port` (`tls.redirect_from`); `None`: serves them.
    pub fn set_redirect_to_https(&self, port: Option<u16>) {
        let port = port.map_or(super::site::NO_REDIRECT, u32::from);
        self.site.redirect_port.store(port, Ordering::Relaxed);
    }

    /// Sends the app's requests to its instances as `upstream` says: over HTTP/1.1, or over
    /// HTTP/2 (one multiplexed connection per instance and worker) without TLS (`h2c`) or over
    /// TLS verified as `tls` says (`h2`), for `app` in messages. The CA is read now, only when
    /// either changed; an error (it cannot be read) leaves the settings before in place.
    pub fn set_upstream(
        &self,
        app: &str,
        upstream: Upstream,
        tls: Option<&UpstreamTlsSpec>,
    ) -> Result<(), String> {
        let mut current = lock(&self.site.upstream_spec);
        if current.0 == upstream && current.1.as_ref() == tls {
            return Ok(());
        }
        let client = match upstream {
            Upstream::H2 => Some(UpstreamTls::load(app, &tls.cloned().unwrap_or_default())?),
            Upstream::Http1 | Upstream::H2c => None,
        };
        self.site.upstream_tls.store(client);
        self.site
            .upstream_h2
            .store(upstream.is_http2(), Ordering::Relaxed);
        *current = (upstream, tls.cloned());
        Ok(())
    }

    /// Plain HTTP connections that open with HTTP/2's preface are served HTTP/2 (h2c with prior
    /// knowledge). An address shared by several apps does so when any of them asks.
    pub fn set_h2c(&self, on: bool) {
        self.front.state.want(&self.site, |wants| wants.h2c = on);
    }

    /// Serves the app's hosts over TLS with the certificate `tls` names (`None`: no TLS), read
    /// now — an error (a file missing or unreadable, a key that does not go with the
    /// certificate) leaves the one before in place — then read again whenever its files change
    /// (checked every [`CERT_CHECK`]), for `app` in the log. Setting what is set already
    /// changes nothing.
    ///
    /// With `tls.acme` the address speaks TLS at once, and the certificates come later through
    /// [`Proxy::cert_slot`] (from `supervisor::acme`): until the first, a handshake for the
    /// app's hosts gets another app's certificate on the address, or none and fails.
    pub fn set_tls(&self, app: &str, tls: Option<&TlsSpec>) -> Result<(), String> {
        let mut current = lock(&self.site.tls);
        if current.as_ref() == tls {
            return Ok(());
        }
        let Some(spec) = tls else {
            self.site.tls_generation.fetch_add(1, Ordering::SeqCst);
            self.front.state.set_cert(&self.site, None);
            self.front.state.clear_host_certs(&self.site);
            self.front.state.want(&self.site, |wants| wants.tls = false);
            self.site.set_hsts(None);
            *current = None;
            return Ok(());
        };
        let (Some(cert_path), Some(key_path)) = (&spec.cert, &spec.key) else {
            // Ordered over ACME: what was served keeps serving until the first is published.
            self.site.tls_generation.fetch_add(1, Ordering::SeqCst);
            self.front.state.want(&self.site, |wants| wants.tls = true);
            self.site.set_hsts(spec.hsts);
            *current = Some(spec.clone());
            return Ok(());
        };
        let stamp = Stamp::of(&[cert_path, key_path]);
        let cert = tls::load(cert_path, key_path)?;
        let generation = self.site.tls_generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.front.state.set_cert(&self.site, Some(cert));
        self.front.state.clear_host_certs(&self.site);
        self.front.state.want(&self.site, |wants| wants.tls = true);
        self.site.set_hsts(spec.hsts);
        *current = Some(spec.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let watch = CertWatch {
                app: app.to_owned(),
                cert: cert_path.clone(),
                key: key_path.clone(),
                site: Arc::downgrade(&self.site),
                state: Arc::downgrade(&self.front.state),
                generation,
            };
            runtime.spawn(watch.run(stamp));
        }
        Ok(())
    }

    /// Where `supervisor::acme` publishes the certificates it orders for the app's current
    /// `tls`: good until the app leaves the address or its `tls` is set anew.
    pub fn cert_slot(&self) -> CertSlot {
        CertSlot {
            site: Arc::downgrade(&self.site),
            state: Arc::downgrade(&self.front.state),
            generation: self.site.tls_generation.load(Ordering::SeqCst),
        }
    }

    /// TCP mode: each new connection goes whole to one instance (counted as one request;
    /// a failed connect is tried on another instance). Connections already open keep their mode.
    pub fn set_tcp(&self, on: bool) {
        self.front.state.want(&self.site, |wants| wants.tcp = on);
    }

    /// What a client may hold and for how long: the most connections open at once, and how
    /// long an unused connection, a stalled request body or an untaken response may last (see
    /// [`ClientLimits`]). The connection limit applies at once; the rest to new connections. An
    /// address shared by several apps serves the most generous of their limits.
    pub fn set_client_limits(&self, limits: ClientLimits) {
        self.front
            .state
            .want(&self.site, |wants| wants.limits = Some(limits));
    }

    /// Sets only `idle_timeout` of the client limits (30 s unless set): a connection with no
    /// request begun and none in progress is closed after one to two such periods.
    pub fn set_idle_timeout(&self, timeout: Duration) {
        let limits = self.front.state.limits.get();
        self.set_client_limits(ClientLimits {
            idle_timeout: timeout,
            ..limits
        });
    }

    /// HTTP mode: appends a JSON line per request to the access log at `path` (`app` names the
    /// app in each line), written by a thread of its own, never in a request's way; `None`
    /// stops it. Setting the path already in use changes nothing; an error (the file cannot be
    /// opened) leaves the log as it was.
    pub fn set_access_log(&self, app: &str, path: Option<&Path>) -> std::io::Result<()> {
        self.site.set_access_log(app, path)
    }

    /// The access log's file and the lines it dropped or lost so far; `None` with the log off.
    pub fn access_log_losses(&self) -> Option<(std::path::PathBuf, LineLosses)> {
        self.site.access_log_losses()
    }

    /// Client connections open now on the address (every app's: a keep-alive connection may
    /// carry requests for several).
    pub fn client_connections(&self) -> usize {
        self.front.state.downstream.count()
    }

    /// When each certificate the app serves stops being valid, by the host it is served for
    /// (`*` for the app's own certificate when it has no hosts: it takes every name).
    pub fn certificate_expiry(&self) -> Vec<(String, std::time::SystemTime)> {
        let mut expiry = Vec::new();
        for (hosts, cert) in self.front.state.certificates(&self.site) {
            let Some(Ok((_, not_after))) = cert.cert.first().map(|leaf| tls::validity(leaf)) else {
                continue;
            };
            let names: Vec<String> = hosts.iter().map(ToString::to_string).collect();
            let names = if names.is_empty() {
                vec!["*".to_owned()]
            } else {
                names
            };
            for name in names {
                if !expiry.iter().any(|(n, _)| *n == name) {
                    expiry.push((name, not_after));
                }
            }
        }
        expiry
    }

    /// Counters of every backend currently routed or still draining.
    pub fn stats(&self) -> Vec<BackendStats> {
        self.site.stats()
    }

    /// What backends no longer known served, by release, for the releases still running (see
    /// [`Proxy::stats`]): with it, a release's totals never go down while it runs.
    pub fn retired(&self) -> Vec<(String, [SlotStats; 2])> {
        self.site.retired()
    }

    /// Waits until `backend_id` has no request or connection in flight, or `timeout` passes;
    /// returns the number still open (and then cut) at the deadline.
    ///
    /// A backend that is no longer routed is forgotten afterwards (its counters go with it).
    pub async fn drain(&self, backend_id: &str, timeout: Duration) -> u64 {
        self.site.drain(backend_id, timeout).await
    }
}

/// How often a certificate's files are looked at for a change.
pub const CERT_CHECK: Duration = Duration::from_secs(1);

/// Reads an app's certificate again when its files change, until the app is gone or its `tls`
/// is set anew.
struct CertWatch {
    app: String,
    cert: PathBuf,
    key: PathBuf,
    site: Weak<SiteState>,
    state: Weak<ProxyState>,
    generation: u64,
}

impl CertWatch {
    async fn run(self, mut loaded: Stamp) {
        let paths = [self.cert.as_path(), self.key.as_path()];
        // The files as they were when a read failed: said once, tried again when they change.
        let mut failed = None;
        loop {
            tokio::time::sleep(CERT_CHECK).await;
            let (Some(site), Some(state)) = (self.site.upgrade(), self.state.upgrade()) else {
                return;
            };
            if site.tls_generation.load(Ordering::SeqCst) != self.generation {
                return;
            }
            let now = Stamp::of(&paths);
            if now == loaded || Some(&now) == failed.as_ref() {
                continue;
            }
            match tls::load(&self.cert, &self.key) {
                Ok(cert) => {
                    state.set_cert(&site, Some(cert));
                    tracing::info!(app = %self.app, "reloaded the certificate {}", self.cert.display());
                    loaded = now;
                    failed = None;
                }
                Err(why) => {
                    tracing::warn!(app = %self.app, "{why}; new connections keep the certificate read before");
                    failed = Some(now);
                }
            }
        }
    }
}

/// One app's place for certificates ordered over ACME (see [`Proxy::cert_slot`]).
#[derive(Debug, Clone)]
pub struct CertSlot {
    site: Weak<SiteState>,
    state: Weak<ProxyState>,
    generation: u64,
}

impl CertSlot {
    /// Whether the app is still on its address with the `tls` this slot was made for.
    pub fn alive(&self) -> bool {
        self.site
            .upgrade()
            .is_some_and(|site| site.tls_generation.load(Ordering::SeqCst) == self.generation)
            && self.state.strong_count() > 0
    }

    /// Serves `cert` for `host` from the next handshake on, in one swap (a handshake gets the
    /// old certificate or the new one); false, and nothing done, when the slot is not alive.
    pub fn publish(&self, host: &str, cert: Arc<CertifiedKey>) -> bool {
        let (Some(site), Some(state)) = (self.site.upgrade(), self.state.upgrade()) else {
            return false;
        };
        if site.tls_generation.load(Ordering::SeqCst) != self.generation {
            return false;
        }
        state.set_host_cert(&site, host, Some(cert));
        true
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The front itself goes with its last handle.
        self.front.state.remove_site(&self.site);
    }
}
