//! One task per app: the only owner of the app's record and instances, driven by a closed set of
//! controls, each with a reply (the watchexec "job" shape).
//!
//! The task never waits on a rollout: a deploy or rollback runs as its own task (`deploy::run`)
//! and asks this one, through [`Link`], to start candidates and to switch; meanwhile `status` is
//! answered at once and instance events keep the route right. Instances are tasks too
//! (`instance.rs`), so the app task only ever awaits short things.

mod canary;
pub mod instance;
mod rollouts;
mod status;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::protocol::canary::Share;
use crate::protocol::{
    AppSpec, AppStatus, DeployOutcome, DeployRequest, ErrorKind, ErrorReply, Progress, Response,
};
use crate::supervisor::canary::Decision;
use crate::supervisor::deploy::{self, Kind, Rollout};
use crate::supervisor::process::{self, Running, SpawnSpec};
use crate::supervisor::proxy::{Proxy, Route};
use crate::supervisor::store::{AppRecord, InstanceRecord, Store};
use crate::supervisor::{releases, rollback};

use instance::{InstanceHandle, InstancePlan, Lifecycle};

/// What an app task and its rollout share; immutable apart from the proxy's own insides.
#[derive(Debug)]
pub struct AppShared {
    pub name: String,
    pub state_dir: PathBuf,
    pub proxy: Proxy,
    pub store: Arc<Store>,
}

/// The requests an app task answers; every one carries its reply.
#[derive(Debug)]
pub enum Control {
    Deploy {
        request: Box<DeployRequest>,
        progress: mpsc::Sender<Progress>,
        reply: oneshot::Sender<Response>,
    },
    Rollback {
        version: Option<String>,
        progress: mpsc::Sender<Progress>,
        reply: oneshot::Sender<Response>,
    },
    Status {
        reply: oneshot::Sender<AppStatus>,
    },
    Releases {
        reply: oneshot::Sender<Response>,
    },
    Logs {
        reply: oneshot::Sender<Response>,
    },
    /// Stop every instance, close the proxy, forget the app; the task ends after replying.
    Stop {
        reply: oneshot::Sender<Response>,
    },
    /// `cutover promote` / `cutover abort`: handed to the running canary.
    Decide {
        decision: Decision,
        reply: oneshot::Sender<Response>,
    },
    /// Supervisor shutdown: let go of the instances (they keep running), persist, end.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Supervisor hand-over: like `Shutdown`, but the reply carries the app's proxy, still
    /// serving, for the old supervisor to keep until the new one serves.
    Release {
        reply: oneshot::Sender<Arc<AppShared>>,
    },
}

/// What the app task hears from its instances and its rollout.
#[derive(Debug)]
pub enum Event {
    /// An instance's view changed (health, exit, pid): recompute the route, persist pids.
    InstanceChanged(String),
    /// The rollout asks for its candidates: recorded first, then started.
    StartCandidates {
        version: String,
        spec: Box<AppSpec>,
        reply: oneshot::Sender<Result<Vec<InstanceHandle>, String>>,
    },
    /// A canary step: route this share of new clients to the healthy candidates (`None`: none).
    Canary {
        share: Option<Share>,
        reply: oneshot::Sender<()>,
    },
    /// The rollout's candidates are healthy: make them live and route to them.
    Switch {
        version: String,
        reply: oneshot::Sender<Switched>,
    },
}

/// What the switch hands back to the rollout: the instances it now drains and stops.
#[derive(Debug)]
pub struct Switched {
    pub retiring: Vec<InstanceHandle>,
    /// The record after the switch, for pruning.
    pub record: AppRecord,
}

/// The rollout's way back into its app task.
#[derive(Debug, Clone)]
pub struct Link {
    events: mpsc::UnboundedSender<Event>,
}

impl Link {
    pub async fn start_candidates(
        &self,
        version: &str,
        spec: &AppSpec,
    ) -> Result<Vec<InstanceHandle>, String> {
        let (reply, answer) = oneshot::channel();
        let event = Event::StartCandidates {
            version: version.to_owned(),
            spec: Box::new(spec.clone()),
            reply,
        };
        self.events.send(event).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    pub async fn canary(&self, share: Option<Share>) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::Canary { share, reply })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }

    pub async fn switch(&self, version: &str) -> Result<Switched, String> {
        let (reply, answer) = oneshot::channel();
        let event = Event::Switch {
            version: version.to_owned(),
            reply,
        };
        self.events.send(event).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }
}

fn gone() -> String {
    "the app was stopped while the rollout ran".to_owned()
}

/// A handle on a running app task.
#[derive(Debug, Clone)]
pub struct AppHandle {
    pub controls: mpsc::Sender<Control>,
}

/// A rollout in flight, as the app task tracks it.
struct RolloutRun {
    kind: Kind,
    version: String,
    reply: Option<oneshot::Sender<Response>>,
    phase: watch::Receiver<String>,
    task: JoinHandle<Result<DeployOutcome, String>>,
    /// The operator's decisions, for a canary.
    decisions: mpsc::Sender<Decision>,
}

/// The app task's state. Fields are visible to `recovery`, which builds a task from a record.
pub struct AppTask {
    pub(crate) shared: Arc<AppShared>,
    pub(crate) record: AppRecord,
    /// Every instance it runs: live, candidates and retiring ones.
    pub(crate) instances: BTreeMap<String, InstanceHandle>,
    /// Ids currently in the proxy's route, to skip needless swaps.
    routed: Vec<String>,
    rollout: Option<RolloutRun>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Why the live release is crash-looping and could not be rolled back, for `status`.
    stuck: Option<String>,
    /// The share of new clients the running canary's candidates get.
    canary: Option<Share>,
}

impl AppTask {
    pub fn new(shared: Arc<AppShared>, record: AppRecord) -> AppTask {
        let (events_tx, events) = mpsc::unbounded_channel();
        AppTask {
            shared,
            record,
            instances: BTreeMap::new(),
            routed: Vec::new(),
            rollout: None,
            events_tx,
            events,
            stuck: None,
            canary: None,
        }
    }

    /// Runs the task until it is stopped or shut down.
    pub fn spawn(self) -> AppHandle {
        let (controls_tx, controls) = mpsc::channel(32);
        tokio::spawn(self.run(controls));
        AppHandle {
            controls: controls_tx,
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
                    app: self.shared.name.clone(),
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
                let _ = reply.send(self.shared.clone());
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
                app: self.shared.name.clone(),
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
            Kind::Deploy,
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
                self.begin(Kind::Rollback { from }, target, spec, progress, Some(reply));
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
                self.shared.name, r.kind, r.version, self.shared.name
            ),
        })
    }

    /// Hands a rollout to its own task; this one stays free for controls and events.
    pub(crate) fn begin(
        &mut self,
        kind: Kind,
        version: String,
        spec: AppSpec,
        progress: mpsc::Sender<Progress>,
        reply: Option<oneshot::Sender<Response>>,
    ) {
        let (phase_tx, phase) = watch::channel(format!("{}: starting", kind.doing(&version)));
        let (decisions, decided) = mpsc::channel(4);
        let rollout = Rollout {
            shared: self.shared.clone(),
            link: Link {
                events: self.events_tx.clone(),
            },
            kind: kind.clone(),
            version: version.clone(),
            spec,
            dest: self.record.dest.clone(),
            previous: self.record.live.clone(),
            progress,
            phase: phase_tx,
            decisions: tokio::sync::Mutex::new(decided),
        };
        tracing::info!(app = %self.shared.name, "{kind} of {version} begins");
        self.rollout = Some(RolloutRun {
            kind,
            version,
            reply,
            phase,
            task: tokio::spawn(deploy::run(rollout)),
            decisions,
        });
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::InstanceChanged(id) => self.on_instance_changed(&id),
            Event::StartCandidates {
                version,
                spec,
                reply,
            } => {
                let _ = reply.send(self.start_candidates(&version, &spec));
            }
            Event::Canary { share, reply } => {
                self.canary = share;
                self.update_route();
                let _ = reply.send(());
            }
            Event::Switch { version, reply } => {
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
        } else if self.set_recorded_process(id, view.process) {
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
        self.shared.proxy.set_route(Route::default());
        if let Err(e) = self.shared.store.remove(&self.shared.name) {
            tracing::error!(app = %self.shared.name, "{e}");
        }
        tracing::info!(app = %self.shared.name, "stopped {stopped} instances and forgot the app");
        Response::Stopped(crate::protocol::StopOutcome {
            app: self.shared.name.clone(),
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

    pub(crate) fn persist(&self) {
        if let Err(e) = self.shared.store.put(&self.shared.name, &self.record) {
            tracing::error!(app = %self.shared.name, "{e}");
        }
    }

    /// Copies a (new) pid into the record; true if it changed.
    fn set_recorded_process(&mut self, id: &str, process: Option<process::ProcessId>) -> bool {
        let deploy = self
            .record
            .deploy
            .iter_mut()
            .flat_map(|d| d.candidates.iter_mut().chain(d.retiring.iter_mut()));
        let record = self
            .record
            .instances
            .iter_mut()
            .chain(deploy)
            .find(|r| r.id == id);
        match record {
            Some(r) if r.process != process => {
                r.process = process;
                true
            }
            _ => false,
        }
    }

    fn is_live(&self, id: &str) -> bool {
        self.record.instances.iter().any(|r| r.id == id)
    }

    pub(crate) fn next_id(&mut self, version: &str) -> String {
        let n = self.record.next_instance;
        self.record.next_instance += 1;
        format!("{}-{version}-{n}", self.shared.name)
    }

    /// How to run the instance `record` of a release with `spec`.
    pub(crate) fn plan(
        &self,
        record: &InstanceRecord,
        spec: &AppSpec,
    ) -> std::io::Result<InstancePlan> {
        let logs = self.shared.state_dir.join("logs").join(&self.shared.name);
        std::fs::create_dir_all(&logs)?;
        let mut env = spec.env.clone();
        env.insert("PORT".to_owned(), record.port.to_string());
        let addr = SocketAddr::new(loopback_for(&spec.listen), record.port);
        Ok(InstancePlan {
            id: record.id.clone(),
            version: record.version.clone(),
            addr,
            spawn: SpawnSpec {
                command: spec.run.replace("{port}", &record.port.to_string()),
                cwd: crate::protocol::layout::release_dir(&self.record.dest, &record.version),
                env,
                log_path: logs.join(format!("{}.log", record.id)),
            },
            health: spec.health.clone(),
            stop_signal: spec.stop_signal.clone(),
            stop_timeout: spec.stop_timeout,
        })
    }

    /// Starts an instance task (spawning, or taking over `adopted`) and tracks it.
    pub(crate) fn launch(
        &mut self,
        plan: InstancePlan,
        adopted: Option<Running>,
    ) -> InstanceHandle {
        let handle = instance::start(plan, adopted, self.events_tx.clone());
        self.instances.insert(handle.id.clone(), handle.clone());
        handle
    }

    pub(crate) fn route_now(&mut self) {
        self.update_route();
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

/// Instances listen on the loopback of the listen address's family: the proxy is their only
/// client, and nothing else on the network should reach them around it.
pub fn loopback_for(listen: &str) -> IpAddr {
    match listen.parse::<SocketAddr>() {
        Ok(SocketAddr::V6(_)) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        Ok(SocketAddr::V4(v4)) if v4.ip().is_loopback() => IpAddr::V4(*v4.ip()),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}
