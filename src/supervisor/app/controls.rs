//! The app task's loop: controls from the control socket and events from its instances and its
//! rollout, each handed to its handler; deploys and rollbacks begin here, `stop` and shutdown end
//! the task.

use tokio::sync::{mpsc, oneshot, watch};

use crate::protocol::{
    AppSpec, DeployOutcome, DeployRequest, ErrorKind, ErrorReply, Progress, Response,
};
use crate::supervisor::instance::{InstanceHandle, Lifecycle};
use crate::supervisor::proxy::Route;
use crate::supervisor::rollout::{
    deploy, releases, rollback, AppEvent, AppTaskLink, CanaryTrace, Rollout, RolloutKind,
};

use super::task::{AppHandle, AppTask, Control, RolloutRun};

impl AppTask {
    /// Runs the task until it is stopped or shut down.
    pub fn spawn(self) -> AppHandle {
        let (controls_tx, controls) = mpsc::channel(32);
        let context = self.context.clone();
        tokio::spawn(self.run(controls));
        AppHandle {
            controls: controls_tx,
            context,
        }
    }

    async fn run(mut self, mut controls: mpsc::Receiver<Control>) {
        loop {
            tokio::select! {
                control = controls.recv() => {
                    let Some(control) = control else {
                        self.shutdown().await;
                        return;
                    };
                    if let Control::Stop { reply } = control {
                        let response = self.stop().await;
                        // The proxy goes with the task: drop it before answering, so that the
                        // address is free again when the client hears "stopped".
                        drop(self);
                        let _ = reply.send(response);
                        return;
                    }
                    if self.on_control(control).await.is_break() {
                        return;
                    }
                }
                Some(event) = self.events.recv() => self.on_event(event),
                result = rollout_done(&mut self.rollout) => self.on_rollout_done(result).await,
            }
        }
    }

    async fn on_control(&mut self, control: Control) -> std::ops::ControlFlow<()> {
        match control {
            Control::Deploy {
                request,
                progress,
                reply,
            } => self.on_deploy(*request, progress, reply),
            Control::Rollback {
                version,
                progress,
                reply,
            } => self.on_rollback(version, progress, reply),
            Control::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Control::Releases { reply } => {
                let _ = reply.send(Response::Releases(crate::protocol::ReleaseList {
                    app: self.context.name.clone(),
                    releases: releases::list(&self.record),
                }));
            }
            Control::Decide { decision, reply } => {
                let _ = reply.send(self.decide(decision));
            }
            Control::Logs { reply } => {
                let _ = reply.send(Response::Logs(self.logs()));
            }
            Control::Stop { reply } => {
                // Handled in `run`, which owns the task and can drop it before answering.
                let _ = reply.send(self.stop().await);
                return std::ops::ControlFlow::Break(());
            }
            Control::Shutdown { reply } => {
                self.shutdown().await;
                let _ = reply.send(());
                return std::ops::ControlFlow::Break(());
            }
            Control::Release { reply } => {
                self.shutdown().await;
                let _ = reply.send(self.context.clone());
                return std::ops::ControlFlow::Break(());
            }
        }
        std::ops::ControlFlow::Continue(())
    }

    fn on_deploy(
        &mut self,
        request: DeployRequest,
        progress: mpsc::Sender<Progress>,
        reply: oneshot::Sender<Response>,
    ) {
        if let Some(busy) = self.busy() {
            let _ = reply.send(Response::Error(busy));
            return;
        }
        if let Err(e) = deploy::validate(&request, Some(&self.record)) {
            let _ = reply.send(Response::Error(e));
            return;
        }
        if self.record.live.as_deref() == Some(request.version.as_str()) {
            // A replayed event or a re-run manifest: the release already serves, nothing to do.
            let _ = reply.send(Response::Deployed(DeployOutcome {
                app: self.context.name.clone(),
                version: request.version,
                previous: None,
            }));
            return;
        }
        let release = self
            .record
            .releases
            .entry(request.version.clone())
            .or_insert_with(|| crate::supervisor::store::ReleaseRecord {
                spec: request.app.clone(),
                deployed_at: None,
                bad: None,
            });
        release.spec = request.app.clone();
        self.begin(
            RolloutKind::Deploy,
            request.version,
            request.app,
            progress,
            Some(reply),
        );
    }

    fn on_rollback(
        &mut self,
        version: Option<String>,
        progress: mpsc::Sender<Progress>,
        reply: oneshot::Sender<Response>,
    ) {
        if let Some(busy) = self.busy() {
            let _ = reply.send(Response::Error(busy));
            return;
        }
        match rollback::choose(&self.record, version.as_deref()) {
            Ok((target, spec)) => {
                let from = self.record.live.clone();
                self.begin(
                    RolloutKind::Rollback { from },
                    target,
                    spec,
                    progress,
                    Some(reply),
                );
            }
            Err(e) => {
                let _ = reply.send(Response::Error(e));
            }
        }
    }

    fn busy(&self) -> Option<ErrorReply> {
        self.rollout.as_ref().map(|r| ErrorReply {
            kind: ErrorKind::Busy,
            message: format!(
                "{} is busy: {} of {} in progress; wait for it (`cutover status {}`)",
                self.context.name, r.kind, r.version, self.context.name
            ),
        })
    }

    /// Hands a rollout to its own task; this one stays free for controls and events.
    pub(crate) fn begin(
        &mut self,
        kind: RolloutKind,
        version: String,
        spec: AppSpec,
        progress: mpsc::Sender<Progress>,
        reply: Option<oneshot::Sender<Response>>,
    ) {
        let (phase_tx, phase) = watch::channel(format!("{}: starting", kind.doing(&version)));
        let (canary_tx, canary) = watch::channel(CanaryTrace::default());
        let (decisions, decided) = mpsc::channel(4);
        let rollout = Rollout {
            app: self.context.clone(),
            link: AppTaskLink::new(self.events_tx.clone()),
            kind: kind.clone(),
            version: version.clone(),
            spec,
            dest: self.record.dest.clone(),
            previous: self.record.live.clone(),
            progress,
            phase: phase_tx,
            canary: canary_tx,
            decisions: tokio::sync::Mutex::new(decided),
        };
        tracing::info!(app = %self.context.name, "{kind} of {version} begins");
        self.rollout = Some(RolloutRun {
            kind,
            version,
            reply,
            phase,
            canary,
            previous: self.record.live.clone(),
            began: std::time::SystemTime::now(),
            task: tokio::spawn(deploy::run(rollout)),
            decisions,
        });
    }

    fn on_event(&mut self, event: AppEvent) {
        match event {
            AppEvent::InstanceChanged(id) => self.on_instance_changed(&id),
            AppEvent::StartCandidates {
                version,
                spec,
                reply,
            } => {
                let _ = reply.send(self.start_candidates(&version, &spec));
            }
            AppEvent::Canary { share, reply } => {
                self.canary = share;
                self.update_route();
                let _ = reply.send(());
            }
            AppEvent::Switch { version, reply } => {
                let _ = reply.send(self.switch(&version));
            }
        }
    }

    fn on_instance_changed(&mut self, id: &str) {
        let Some(handle) = self.instances.get(id) else {
            return;
        };
        let view = handle.view();
        if let Lifecycle::Stopped { .. } = view.lifecycle {
            self.instances.remove(id);
            if let Some(deploy) = &mut self.record.deploy {
                deploy.retiring.retain(|r| r.id != id);
            }
            self.persist();
        } else if self.set_recorded_process(id, view.process, view.addr.port()) {
            self.persist();
        }
        self.update_route();
        if let (Some(reason), true) = (view.crash_loop, self.is_live(id)) {
            self.on_live_crash_loop(reason);
        }
    }

    /// Stops everything the app runs and forgets it.
    async fn stop(&mut self) -> Response {
        if let Some(run) = self.rollout.take() {
            run.task.abort();
            let _ = run.task.await;
            if let Some(reply) = run.reply {
                let _ = reply.send(Response::Error(ErrorReply {
                    kind: ErrorKind::DeployFailed,
                    message: format!(
                        "{} of {} was cancelled by `cutover stop`",
                        run.kind, run.version
                    ),
                }));
            }
        }
        let handles: Vec<InstanceHandle> = self.instances.values().cloned().collect();
        let stopped = handles.len() as u32;
        futures_util::future::join_all(handles.iter().map(|h| h.stop())).await;
        self.context.proxy.set_route(Route::default());
        if let Err(e) = self.context.store.remove(&self.context.name) {
            tracing::error!(app = %self.context.name, "{e}");
        }
        tracing::info!(app = %self.context.name, "stopped {stopped} instances and forgot the app");
        Response::Stopped(crate::protocol::StopOutcome {
            app: self.context.name.clone(),
            stopped,
        })
    }

    /// Lets go of every instance (their processes keep running for the next supervisor).
    async fn shutdown(&mut self) {
        if let Some(run) = self.rollout.take() {
            // The record still names the candidates: the next start stops them (zombie deploy).
            run.task.abort();
            let _ = run.task.await;
        }
        for handle in self.instances.values() {
            handle.detach().await;
        }
        self.persist();
    }
}

/// Resolves when the rollout in flight ends; never while there is none.
async fn rollout_done(
    rollout: &mut Option<RolloutRun>,
) -> Result<Result<DeployOutcome, String>, tokio::task::JoinError> {
    match rollout {
        Some(run) => (&mut run.task).await,
        None => std::future::pending().await,
    }
}
