//! Crash recovery: a supervisor that starts over an existing state file takes its apps back.
//!
//! Live instances whose pid *and* start time still match are re-adopted as they are (an adopted
//! healthy instance is never restarted: that is the point of surviving a supervisor crash); gone
//! ones are started again on a fresh port. A rollout that was in flight (a "zombie deploy") is
//! resolved the safe way: its candidates and any half-drained old instances are stopped, and
//! whatever the record says is live stays live. Instances the state file lost track of (started in
//! the instant before a crash) are found by their marks ([`crate::supervisor::strays`]).

use std::sync::Arc;

use crate::supervisor::app::{loopback_for, AppHandle, AppTask};
use crate::supervisor::process;
use crate::supervisor::rollout::AppContext;
use crate::supervisor::store::{AppRecord, InstanceRecord};
use crate::supervisor::strays::Strays;

/// Builds the app task from its stored record and starts it.
/// Live instances whose recorded pid is gone are looked for among `strays` before being
/// started again; whatever runs as a live instance is then taken out of `strays`.
pub async fn resume(context: Arc<AppContext>, record: AppRecord, strays: &mut Strays) -> AppHandle {
    let mut task = AppTask::new(context, record);
    resolve_zombie_deploy(&mut task).await;
    readopt_live(&mut task, strays);
    task.route_now();
    task.persist();
    task.spawn()
}

/// Stops what an interrupted rollout had started and forgets the rollout.
async fn resolve_zombie_deploy(task: &mut AppTask) {
    let Some(deploy) = task.record.deploy.take() else {
        return;
    };
    let name = task.context.name.clone();
    let spec = task
        .record
        .releases
        .get(&deploy.version)
        .map_or_else(|| task.record.spec.clone(), |r| r.spec.clone());
    let leftovers: Vec<&InstanceRecord> =
        deploy.candidates.iter().chain(&deploy.retiring).collect();
    let mut stopped = 0;
    for instance in &leftovers {
        let Some(mut running) = instance.process.and_then(process::adopt) else {
            continue;
        };
        let status = process::stop(&mut running, &spec.stop_signal, spec.stop_timeout).await;
        tracing::info!(app = %name, "stopped {} left by the interrupted rollout: {status}", instance.id);
        stopped += 1;
    }
    let kept = task.record.live.as_deref().unwrap_or("nothing");
    tracing::warn!(
        app = %name,
        "resolved an interrupted rollout of {}: stopped {stopped} of its {} leftover instance(s), kept {kept} live",
        deploy.version,
        leftovers.len()
    );
    task.persist();
}

/// Re-adopts each live instance that still runs (by its recorded pid, or else by its marks),
/// and starts again those that are gone.
fn readopt_live(task: &mut AppTask, strays: &mut Strays) {
    let name = task.context.name.clone();
    let host = loopback_for(task.context.listen);
    let mut instances = std::mem::take(&mut task.record.instances);
    for instance in &mut instances {
        let spec = task
            .record
            .releases
            .get(&instance.version)
            .map_or_else(|| task.record.spec.clone(), |r| r.spec.clone());
        let mut adopted = instance.process.and_then(process::adopt);
        if adopted.is_none() {
            if let Some((running, stray)) = strays.adopt(&instance.id) {
                tracing::info!(app = %name, "found {} running as pid {}, which the state file had not recorded", instance.id, running.id.pid);
                instance.process = Some(running.id);
                instance.port = stray.port.unwrap_or(instance.port);
                adopted = Some(running);
            }
        }
        if adopted.is_some() {
            tracing::info!(app = %name, "re-adopted {} (pid {})", instance.id, instance.process.map_or(0, |p| p.pid));
        } else {
            // Its old port may have been taken meanwhile; a fresh one cannot collide.
            match process::free_port(host) {
                Ok(port) => instance.port = port,
                Err(e) => {
                    tracing::warn!(app = %name, "no fresh port for {}: {e}; reusing {}", instance.id, instance.port)
                }
            }
            instance.process = None;
            tracing::warn!(app = %name, "{} is gone; starting it again on port {}", instance.id, instance.port);
        }
        match task.plan(instance, &spec) {
            Ok(plan) => {
                task.launch(plan, adopted);
            }
            Err(e) => {
                tracing::error!(app = %name, "cannot prepare {}: {e}; it stays down", instance.id)
            }
        }
    }
    strays.keep(instances.iter().map(|i| i.id.as_str()));
    task.record.instances = instances;
}
