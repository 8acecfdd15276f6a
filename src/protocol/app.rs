//! The manifest's `app:` section: what the supervisor needs to run, check and route one app.
//!
//! It is parsed by the agent from the manifest and sent as is to the supervisor in a deploy
//! request, and the supervisor stores it with each release, so it lives in the protocol module.
//! Unknown keys are an error (`deny_unknown_fields`): a typo must not silently do nothing.
//! What the section says on its own is checked by [`AppSpec::check`], on both sides: by the
//! agent before it fetches anything, by the supervisor before it deploys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::canary::CanarySpec;
use super::routes::Routes;
pub use super::tls::TlsSpec;
pub use super::upstream::{Upstream, UpstreamTlsSpec};

/// One long-running application, as described by a manifest's `app:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Name of the app, unique on this host; letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// Release version; when absent the agent derives one from the archive's checksum.
    #[serde(default)]
    pub version: Option<String>,
    /// Shell line run from the release directory; `{port}` is replaced, `PORT` is also set.
    pub run: String,
    /// Hand each instance its listening socket the systemd way: bound by the supervisor, as fd 3
    /// with `LISTEN_FDS=1` and `LISTEN_PID` (`{port}` and `PORT` still set), so no other process
    /// can take its port. Only for apps that support socket activation.
    #[serde(default)]
    pub socket_activation: bool,
    /// Public address the supervisor's proxy owns, e.g. `0.0.0.0:8080`. Apps may share one,
    /// routed by `hosts` and `path_prefix`.
    pub listen: String,
    /// The hosts this app takes on `listen`: exact names and `*.example.com` wildcards. None:
    /// any host (the address's catch-all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Only requests whose path is this prefix or under it (`/api`: `/api`, `/api/...`); the
    /// path reaches the instance unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Number of instances to run side by side.
    #[serde(default = "defaults::instances")]
    pub instances: u32,
    /// Extra environment for every instance.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How instances are health-checked.
    #[serde(default)]
    pub health: HealthSpec,
    /// How a new release replaces the live one.
    #[serde(default)]
    pub strategy: Strategy,
    /// The steps and limits of `strategy: canary`.
    #[serde(default)]
    pub canary: CanarySpec,
    /// What the proxy speaks on `listen`: `http` (requests routed one by one) or `tcp` (each
    /// connection piped whole to one instance, for apps that do not speak HTTP).
    #[serde(default)]
    pub mode: Mode,
    /// How the proxy spreads requests across healthy instances.
    #[serde(default)]
    pub balance: Balance,
    /// How long a replaced instance may finish its in-flight requests.
    #[serde(default = "defaults::drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// While no instance is routed (all crashed and restarting, or the first deploy not healthy
    /// yet), a new request or connection waits this long for one instead of failing at once.
    /// `0s` (the default): answered 503 at once.
    #[serde(default, with = "humantime_serde")]
    pub hold_requests: Duration,
    /// HTTP mode: a client connection with no request begun and none in progress for this long
    /// is closed (after one to two such periods; a slow request head or a client still taking
    /// a response gets one more).
    #[serde(default = "defaults::idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The most client connections open at once (both modes). Beyond it the proxy closes an
    /// idle keep-alive connection to make room, else new connections wait in the listen backlog.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// HTTP mode: the longest the proxy waits for the next bytes of a request body; then the
    /// request is answered 408 and the connection closed (nginx's `client_body_timeout`).
    #[serde(default = "defaults::body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// HTTP mode: the longest a client may leave the response untaken (the proxy's writes
    /// blocked); then the connection is cut (nginx's `send_timeout`).
    #[serde(default = "defaults::send_timeout", with = "humantime_serde")]
    pub send_timeout: Duration,
    /// HTTP mode: bytes per second a client must average, over the time the proxy waits on it
    /// for a request body or to take a response, beyond a first `body_timeout`/`send_timeout`
    /// of grace (Apache's `MinRate`): a trickle is cut even if no single gap is long. `0`: none.
    #[serde(default = "defaults::min_rate")]
    pub min_rate: u64,
    /// Signal sent to stop an instance (`SIGTERM`, `SIGINT`, `SIGQUIT`, `SIGHUP`, `SIGUSR1`, `SIGUSR2`).
    #[serde(default = "defaults::stop_signal")]
    pub stop_signal: String,
    /// Grace period between the stop signal and SIGKILL to the instance's process group.
    #[serde(default = "defaults::stop_timeout", with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// How many releases to keep on disk (the live one and the rollback target always stay).
    #[serde(default = "defaults::keep_releases")]
    pub keep_releases: u32,
    /// Paths under `dest/shared` linked into every release (e.g. `log`, `tmp/pids`).
    #[serde(default)]
    pub shared: Vec<String>,
    /// Every connection to `listen` starts with a PROXY protocol header (v1 or v2) from a load
    /// balancer in front, naming the real client. Only for a port that nothing else can reach.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// HTTP mode: one JSON line per request (time, app, release, slot, method, path, status,
    /// duration, bytes, request id, client) appended to `STATE/logs/<name>/access.log`.
    #[serde(default)]
    pub access_log: bool,
    /// HTTPS on `listen`: the certificate for the app's hosts; HTTP/2 is offered by ALPN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Plain HTTP on `listen` also takes HTTP/2 without TLS (h2c with prior knowledge), for
    /// clients behind a TLS terminator of their own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub h2c: bool,
    /// What the proxy speaks to the instances: `http1` (the default), `h2c` (HTTP/2 without
    /// TLS) or `h2` (HTTP/2 over TLS), for gRPC: trailers pass, and `grpc-status` counts in the
    /// canary analysis.
    #[serde(default, skip_serializing_if = "Upstream::is_http1")]
    pub upstream: Upstream,
    /// `upstream: h2`: the CA and the name the instances' certificates are verified against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTlsSpec>,
}

impl AppSpec {
    /// What is wrong with this section on its own, in one line naming the key and the fix; the
    /// answer is the public address `listen` names, parsed here once for all.
    ///
    /// Checks that need more than the section (the version, the release on disk, the app's
    /// record) are the supervisor's.
    pub fn check(&self) -> Result<SocketAddr, String> {
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok || self.name.starts_with('.') {
            return Err(format!(
                "app name {:?} is not allowed; use letters, digits, '-', '_' and '.'",
                self.name
            ));
        }
        let listen = self.listen_addr()?;
        if self.run.trim().is_empty() {
            return Err(format!(
                "run of {} is empty; say how to start it",
                self.name
            ));
        }
        // A zero would close every connection at once (or admit none).
        for (key, zero, example) in [
            ("idle_timeout", self.idle_timeout.is_zero(), "30s"),
            ("body_timeout", self.body_timeout.is_zero(), "60s"),
            ("send_timeout", self.send_timeout.is_zero(), "60s"),
            ("max_connections", self.max_connections == 0, "4096"),
        ] {
            if zero {
                return Err(format!(
                    "{key} of {} is 0; give it a value such as {example}",
                    self.name
                ));
            }
        }
        if self.access_log && self.mode == Mode::Tcp {
            return Err(format!(
                "access_log of {} is for mode: http (TCP connections have no requests to log); remove it or use mode: http",
                self.name
            ));
        }
        if self.strategy == Strategy::Canary {
            self.canary.check()?;
        }
        if let Some(tls) = &self.tls {
            tls.check(&self.name, &self.hosts)?;
        }
        if self.mode == Mode::Tcp && (self.tls.is_some() || self.h2c || !self.upstream.is_http1()) {
            return Err(format!(
                "tls, h2c and upstream of {} are for mode: http; remove them or use mode: http",
                self.name
            ));
        }
        super::upstream::check(&self.name, self.upstream, self.upstream_tls.as_ref())?;
        if self.mode == Mode::Tcp && !self.routes()?.is_catch_all() {
            return Err(format!(
                "hosts and path_prefix of {} are for mode: http (a TCP connection names no host); remove them or use mode: http",
                self.name
            ));
        }
        Ok(listen)
    }

    /// The requests this app takes on its address (`hosts`, `path_prefix`), parsed.
    pub fn routes(&self) -> Result<Routes, String> {
        Routes::parse(&self.name, &self.hosts, self.path_prefix.as_deref())
    }

    /// `listen` as an address. [`AppSpec::check`] says so first; this is for a section checked
    /// before (one the supervisor stored).
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen.parse().map_err(|_| {
            format!(
                "listen {:?} of {} is not an address like 0.0.0.0:8080",
                self.listen, self.name
            )
        })
    }
}

/// Health checking of each instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// HTTP path to GET (2xx/3xx is healthy); absent: a TCP connect is the check.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "defaults::health_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "defaults::health_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive passes that make an instance healthy.
    #[serde(default = "defaults::healthy")]
    pub healthy: u32,
    /// Consecutive failures that make an instance unhealthy.
    #[serde(default = "defaults::unhealthy")]
    pub unhealthy: u32,
    /// How long a new instance must stay healthy before it takes traffic.
    #[serde(default, with = "humantime_serde")]
    pub min_healthy_time: Duration,
    /// How long a new release may take to become healthy before it is rolled back.
    #[serde(default = "defaults::health_deadline", with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            path: None,
            interval: defaults::health_interval(),
            timeout: defaults::health_timeout(),
            healthy: defaults::healthy(),
            unhealthy: defaults::unhealthy(),
            min_healthy_time: Duration::ZERO,
            deadline: defaults::health_deadline(),
        }
    }
}

/// How a new release replaces the live one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Start the new instances beside the old, switch all traffic at once when they are healthy.
    #[default]
    BlueGreen,
    /// Start the new instances beside the old, give them a growing share of the traffic step by
    /// step while the proxy's counters judge them, then switch all traffic (or back out).
    Canary,
}

/// What the proxy speaks on an app's public address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// HTTP/1.1 reverse proxy: per-request routing, retries, canary cookies, request ids.
    #[default]
    Http,
    /// L4: each connection goes whole to one instance; canaries weigh connections.
    Tcp,
}

/// How the proxy picks a healthy instance for a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
}

mod defaults {
    use std::time::Duration;

    pub fn instances() -> u32 {
        1
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_connections() -> u32 {
        4096
    }
    pub fn body_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn send_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn min_rate() -> u64 {
        500
    }
    pub fn stop_signal() -> String {
        "SIGTERM".to_owned()
    }
    pub fn stop_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn keep_releases() -> u32 {
        5
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn healthy() -> u32 {
        2
    }
    pub fn unhealthy() -> u32 {
        3
    }
    pub fn health_deadline() -> Duration {
        Duration::from_secs(60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> AppSpec {
        let mut value = serde_json::json!({
            "name": "shop", "run": "./shop --port {port}", "listen": "127.0.0.1:8080"
        });
        value
            .as_object_mut()
            .expect("an object")
            .extend(extra.as_object().expect("an object").clone());
        serde_json::from_value(value).expect("spec")
    }

    #[test]
    fn a_good_section_passes_with_its_address_parsed() {
        let listen = spec(serde_json::json!({})).check().expect("good");
        assert_eq!(listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
    }

    #[test]
    fn each_bad_key_is_named() {
        for (extra, words) in [
            (
                serde_json::json!({"name": ".hidden"}),
                "app name \".hidden\"",
            ),
            (serde_json::json!({"name": "a/b"}), "is not allowed"),
            (
                serde_json::json!({"listen": "nowhere:80"}),
                "listen \"nowhere:80\" of shop",
            ),
            (serde_json::json!({"listen": "8080"}), "not an address"),
            (serde_json::json!({"run": "  "}), "run of shop is empty"),
            (
                serde_json::json!({"idle_timeout": "0s"}),
                "idle_timeout of shop is 0",
            ),
            (
                serde_json::json!({"max_connections": 0}),
                "max_connections of shop is 0",
            ),
            (
                serde_json::json!({"strategy": "canary", "canary": {"steps": []}}),
                "app.canary.steps is empty",
            ),
            (
                serde_json::json!({"mode": "tcp", "access_log": true}),
                "access_log of shop is for mode: http",
            ),
        ] {
            let why = spec(extra.clone()).check().expect_err(&extra.to_string());
            assert!(why.contains(words), "{extra}: {why}");
        }
        // A blue-green release does not use its canary section: not judged.
        assert!(spec(serde_json::json!({"canary": {"steps": []}}))
            .check()
            .is_ok());
    }
}
