//! The app task's side of a rollout and of routing: recording and starting candidates, the
//! switch, the end of a rollout (success, or failure with the release marked bad), the automatic
//! rollback of a live release that crash-loops, and which instances the proxy routes to (a
//! canary's candidates among them while their share is above zero).

use tokio::sync::mpsc;

use crate::protocol::app::Mode;
use crate::protocol::{
    AppSpec, DeployOutcome, ErrorKind, ErrorReply, Response, RolloutOutcome, RECENT_ROLLOUTS,
};
use crate::supervisor::events::Counted;
use crate::supervisor::instance::{InstanceHandle, Lifecycle};
use crate::supervisor::process;
use crate::supervisor::proxy::{Backend, CanaryRoute, ClientLimits, Route};
use crate::supervisor::rollout::{rollback, RolloutKind, Switchover};
use crate::supervisor::store::{DeployRecord, InstanceRecord};

use super::task::{loopback_for, AppTask, RolloutRun, ACCESS_LOG};

impl AppTask {
    /// A live instance crash-loops after its switch: go back to the previous good release if
    /// there is one (health-gated, like a manual rollback), else say so in `status`.
    pub(super) fn on_live_crash_loop(&mut self, reason: String) {
        if self.rollout.is_some() || self.stuck.is_some() {
            return;
        }
        let Some(live) = self.record.live.clone() else {
            return;
        };
        match rollback::choose(&self.record, None) {
            Ok((target, spec)) => {
                tracing::error!(
                    app = %self.context.name,
                    "{live} is crash-looping ({reason}); rolling back to {target}"
                );
                let (progress, _) = mpsc::channel(1);
                let kind = RolloutKind::AutoRollback {
                    from: live,
                    reason: format!("crash-looping after it went live: {reason}"),
                };
                self.begin(kind, target, spec, progress, None);
            }
            Err(e) => {
                tracing::error!(
                    app = %self.context.name,
                    "{live} is crash-looping ({reason}) and cannot be rolled back: {}",
                    e.message
                );
                self.stuck = Some(format!("crash-looping: {reason}; {}", e.message));
            }
        }
    }

    /// Records the candidates in the state before any of them starts, then starts them.
    pub(super) fn start_candidates(
        &mut self,
        version: &str,
        spec: &AppSpec,
    ) -> Result<Vec<InstanceHandle>, String> {
        let host = loopback_for(self.context.listen);
        let mut planned = Vec::new();
        for _ in 0..spec.instances.max(1) {
            let port = process::free_port(host)
                .map_err(|e| format!("no free port on {host} for a new instance: {e}"))?;
            let id = self.next_id(version);
            planned.push(InstanceRecord {
                id,
                version: version.to_owned(),
                port,
                process: None,
            });
        }
        self.record.deploy = Some(DeployRecord {
            version: version.to_owned(),
            candidates: planned.clone(),
            retiring: Vec::new(),
        });
        self.persist();
        let mut handles = Vec::new();
        for record in &planned {
            let plan = self.plan(record, spec).map_err(|e| e.to_string())?;
            handles.push(self.launch(plan, None));
        }
        Ok(handles)
    }

    /// Makes the deploy's candidates the live instances and routes to them, in one step.
    pub(super) fn switch(&mut self, version: &str) -> Switchover {
        let candidates = self
            .record
            .deploy
            .as_mut()
            .map(|d| std::mem::take(&mut d.candidates))
            .unwrap_or_default();
        let retiring = std::mem::replace(&mut self.record.instances, candidates);
        if let Some(deploy) = &mut self.record.deploy {
            deploy.retiring = retiring.clone();
        }
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        if let Some(release) = self.record.releases.get_mut(version) {
            release.deployed_at = Some(now);
            self.record.spec = release.spec.clone();
        }
        self.record.history.retain(|v| v != version);
        self.record.history.push(version.to_owned());
        self.record.live = Some(version.to_owned());
        // The release a rollback leaves is marked bad in the same step that leaves it, so no
        // one (a status, a prune, a crash) ever sees it as the good previous release.
        if let Some((from, reason)) = self
            .rollout
            .as_ref()
            .and_then(|r| r.kind.rolled_away_from())
        {
            rollback::mark_bad(&mut self.record, &from, &reason);
        }
        self.stuck = None;
        self.canary = None;
        self.persist();
        self.update_route();
        Switchover {
            retiring: retiring
                .iter()
                .filter_map(|r| self.instances.get(&r.id).cloned())
                .collect(),
            record: self.record.clone(),
        }
    }

    pub(super) async fn on_rollout_done(
        &mut self,
        result: Result<Result<DeployOutcome, String>, tokio::task::JoinError>,
    ) {
        let Some(run) = self.rollout.take() else {
            return;
        };
        let result = result.unwrap_or_else(|e| Err(format!("internal fault in the rollout: {e}")));
        let counted = match run.kind {
            RolloutKind::Deploy => Counted::Deploy,
            RolloutKind::Rollback { .. } => Counted::OperatorRollback,
            RolloutKind::AutoRollback { .. } => Counted::AutomaticRollback,
        };
        let outcome = if result.is_ok() {
            "succeeded"
        } else {
            "failed"
        };
        self.context
            .events
            .count(counted, &self.context.name, outcome);
        let response = match result {
            Ok(outcome) => {
                tracing::info!(app = %self.context.name, "{} of {} done", run.kind, run.version);
                match run.kind {
                    RolloutKind::Deploy => Response::Deployed(outcome),
                    _ => Response::RolledBack(outcome),
                }
            }
            Err(reason) => {
                rollback::mark_bad(&mut self.record, &run.version, &reason);
                self.stop_leftover_candidates();
                let kept = match &self.record.live {
                    Some(live) => format!("kept {live} serving"),
                    None => "nothing was serving before".to_owned(),
                };
                tracing::error!(app = %self.context.name, "{} of {} failed: {reason}; {kept}", run.kind, run.version);
                Response::Error(ErrorReply {
                    kind: ErrorKind::DeployFailed,
                    message: format!("{} of {} failed: {reason}: {kept}", run.kind, run.version),
                })
            }
        };
        self.remember_outcome(&run, &response);
        self.record.deploy = None;
        self.canary = None;
        self.persist();
        self.update_route();
        if let Some(reply) = run.reply {
            let _ = reply.send(response);
        }
    }

    /// Keeps how the rollout ended in the record's short history, and its canary's trace (the
    /// trace only in memory: it is for watching, not for recovery).
    fn remember_outcome(&mut self, run: &RolloutRun, response: &Response) {
        let now = std::time::SystemTime::now();
        let reason = match response {
            Response::Error(e) => Some(e.message.clone()),
            _ => None,
        };
        let history = &mut self.record.rollouts;
        history.push(RolloutOutcome {
            kind: run.kind.to_string(),
            version: run.version.clone(),
            previous: run.previous.clone(),
            began_at: humantime::format_rfc3339_seconds(run.began).to_string(),
            ended_at: humantime::format_rfc3339_seconds(now).to_string(),
            succeeded: reason.is_none(),
            reason,
        });
        let over = history.len().saturating_sub(RECENT_ROLLOUTS);
        history.drain(..over);
        if let Some(mut canary) = run.canary.borrow().status() {
            canary.running = false;
            self.last_canary = Some(canary);
        }
    }

    /// Candidates a failed (or panicked) rollout left running are stopped in the background.
    pub(super) fn stop_leftover_candidates(&mut self) {
        let Some(deploy) = &self.record.deploy else {
            return;
        };
        for record in &deploy.candidates {
            if let Some(handle) = self.instances.get(&record.id).cloned() {
                tokio::spawn(async move { handle.stop().await });
            }
        }
    }

    /// Sets the proxy's route to the healthy live instances; when none is healthy, to every live
    /// instance that runs (a slow check is better than a certain 503), saying so.
    pub(super) fn update_route(&mut self) {
        let live: Vec<&InstanceHandle> = self
            .record
            .instances
            .iter()
            .filter_map(|r| self.instances.get(&r.id))
            .collect();
        let healthy: Vec<&InstanceHandle> = live
            .iter()
            .copied()
            .filter(|h| matches!(h.view.borrow().lifecycle, Lifecycle::Healthy { .. }))
            .collect();
        let chosen = if healthy.is_empty() {
            live.into_iter()
                .filter(|h| h.view.borrow().process.is_some())
                .collect()
        } else {
            healthy
        };
        let spec = &self.record.spec;
        let routes = spec
            .routes()
            .and_then(|r| self.context.proxy.set_routes(&spec.name, r));
        if let Err(why) = routes {
            // Checked before the deploy began: only an app deployed meanwhile can take them.
            tracing::error!(app = %self.context.name, "keeps its previous hosts and paths: {why}");
        }
        if let Err(why) = self.context.proxy.set_tls(&spec.name, spec.tls.as_ref()) {
            // Loaded before the deploy began: the files changed since.
            tracing::error!(app = %self.context.name, "keeps its previous certificate: {why}");
        }
        let context = &self.context;
        context
            .acme
            .follow(&context.state_dir, spec, &context.proxy);
        self.context.proxy.set_h2c(spec.h2c);
        let upstream_tls = spec.upstream_tls.as_ref();
        if let Err(why) = self
            .context
            .proxy
            .set_upstream(&spec.name, spec.upstream, upstream_tls)
        {
            // Read before the deploy began: the CA file went or changed since.
            tracing::error!(app = %self.context.name, "keeps its previous upstream settings: {why}");
        }
        self.context.proxy.set_proxy_protocol(spec.proxy_protocol);
        self.context.proxy.set_tcp(spec.mode == Mode::Tcp);
        self.context.proxy.set_hold(spec.hold_requests);
        self.context.proxy.set_client_limits(ClientLimits {
            max_connections: spec.max_connections as usize,
            idle_timeout: spec.idle_timeout,
            body_timeout: spec.body_timeout,
            send_timeout: spec.send_timeout,
            min_rate: spec.min_rate,
        });
        self.update_access_log();
        let canary = self.canary_route();
        let mut ids: Vec<String> = chosen.iter().map(|h| h.id.clone()).collect();
        // The canary's share and instances are part of what is routed: a change of either
        // is a new route.
        if let Some(c) = &canary {
            ids.push(format!("canary at {}:", c.share));
            ids.extend(c.backends.iter().map(|b| b.id.clone()));
        }
        let addrs: Vec<std::net::SocketAddr> = chosen.iter().map(|h| h.addr()).collect();
        if ids == self.routed && addrs == self.routed_addrs {
            return;
        }
        if !chosen.is_empty()
            && !chosen
                .iter()
                .any(|h| matches!(h.view.borrow().lifecycle, Lifecycle::Healthy { .. }))
        {
            tracing::warn!(app = %self.context.name, "no healthy instance: routing to {ids:?} anyway");
        }
        tracing::info!(app = %self.context.name, "route now {ids:?}, was {:?}", self.routed);
        self.context.proxy.set_route(Route {
            backends: chosen.iter().map(|h| h.backend()).collect(),
            balance: self.record.spec.balance,
            canary,
        });
        self.routed = ids;
        self.routed_addrs = addrs;
    }

    /// Opens or closes the proxy's access log as the live spec says (nothing when it already
    /// does); a file that cannot be opened is said in the log, and tried again on the next call.
    fn update_access_log(&self) {
        let spec = &self.record.spec;
        let path = (spec.access_log && spec.mode == Mode::Http).then(|| {
            let dir = self.context.state_dir.join("logs").join(&self.context.name);
            dir.join(ACCESS_LOG)
        });
        let name = &self.context.name;
        if let Err(err) = self.context.proxy.set_access_log(name, path.as_deref()) {
            let path = path
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display();
            tracing::warn!(
                app = %name,
                "cannot open the access log {path}: {err}; requests go unlogged until it can be"
            );
        }
    }

    /// The canary part of the route: the running deploy's healthy candidates and their share.
    fn canary_route(&self) -> Option<CanaryRoute> {
        let share = self.canary?;
        let deploy = self.record.deploy.as_ref()?;
        let spec = &self.record.releases.get(&deploy.version)?.spec.canary;
        let backends: Vec<std::sync::Arc<Backend>> = deploy
            .candidates
            .iter()
            .filter_map(|r| self.instances.get(&r.id))
            .filter(|h| matches!(h.view.borrow().lifecycle, Lifecycle::Healthy { .. }))
            .map(|h| h.backend())
            .collect();
        Some(CanaryRoute {
            backends,
            share,
            cookie: spec.cookie.clone(),
            header: spec.header.clone(),
        })
    }
}
