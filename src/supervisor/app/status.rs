//! What an app task reports about itself: `status` (phase, instances, proxy counters) and `logs`.

use std::collections::BTreeMap;

use crate::protocol::{AccessLogStatus, AppStatus, InstanceStatus, LogFiles};
use crate::supervisor::instance::Lifecycle;

use super::task::{AppTask, ACCESS_LOG};

impl AppTask {
    /// The app as `cutover status` shows it, from the instances' views and the proxy's counters.
    pub(super) fn status(&self) -> AppStatus {
        let stats: BTreeMap<String, _> = self
            .context
            .proxy
            .stats()
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let instances = self
            .instances
            .values()
            .map(|handle| {
                let view = handle.view();
                let counters = stats.get(&handle.id).cloned().unwrap_or_default();
                InstanceStatus {
                    id: handle.id.clone(),
                    version: handle.version.clone(),
                    pid: view.process.map(|p| p.pid),
                    addr: view.addr.to_string(),
                    state: view.lifecycle.to_string(),
                    routed: self.routed.contains(&handle.id),
                    restarts: view.restarts,
                    last_failure: view.crash_loop.clone().or(view.last_failure),
                    requests: counters.requests,
                    errors_5xx: counters.errors_5xx,
                    pinned_requests: counters.pinned_requests,
                    client_aborts: counters.client_aborts,
                    in_flight: counters.in_flight,
                    p99_us: counters.p99_us,
                }
            })
            .collect();
        let name = &self.context.name;
        let on_address = self.context.proxy.routes();
        AppStatus {
            name: name.clone(),
            listen: self.record.spec.listen.clone(),
            routes: on_address
                .iter()
                .find(|(app, _)| app == name)
                .map_or_else(String::new, |(_, routes)| routes.to_string()),
            shares_address_with: on_address
                .into_iter()
                .map(|(app, _)| app)
                .filter(|app| app != name)
                .collect(),
            live_version: self.record.live.clone(),
            phase: self.phase(),
            instances,
            certificate: self.context.acme.status(name),
            access_log: self
                .context
                .proxy
                .access_log_losses()
                .map(|(path, losses)| AccessLogStatus {
                    path: path.display().to_string(),
                    dropped_lines: losses.dropped,
                    lost_lines: losses.lost,
                }),
            canary: self
                .rollout
                .as_ref()
                .and_then(|run| run.canary.borrow().status())
                .or_else(|| self.last_canary.clone()),
            recent_rollouts: self.record.rollouts.clone(),
        }
    }

    /// `idle`, the rollout's current step, or why the live release is in trouble.
    fn phase(&self) -> String {
        if let Some(run) = &self.rollout {
            return run.phase.borrow().clone();
        }
        if let Some(stuck) = &self.stuck {
            return stuck.clone();
        }
        let looping = self
            .instances
            .values()
            .find_map(|h| match h.view().lifecycle {
                Lifecycle::CrashLooping { reason, .. } => Some(reason),
                _ => None,
            });
        match looping {
            Some(reason) => format!("crash-looping: {reason}"),
            None if self.routed.is_empty() && self.record.live.is_some() => {
                "degraded: no instance is running".to_owned()
            }
            None => "idle".to_owned(),
        }
    }

    /// The app's instance log files, oldest first (by modification time).
    pub(super) fn logs(&self) -> LogFiles {
        let dir = self.context.state_dir.join("logs").join(&self.context.name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            // The proxy's access log lives beside them; it is no instance's.
            .filter(|e| e.file_name() != ACCESS_LOG)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.sort();
        LogFiles {
            app: self.context.name.clone(),
            files: files.into_iter().map(|(_, path)| path).collect(),
        }
    }
}
