//! One app's task: its types, and its record and instance bookkeeping. The task is the only
//! owner of the app's record and instances, driven by a closed set of [`Control`]s, each with a
//! reply (the watchexec "job" shape).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::protocol::canary::Share;
use crate::protocol::{
    AppSpec, AppStatus, CanaryStatus, DeployOutcome, DeployRequest, Progress, Response,
};
use crate::supervisor::instance::{self, InstanceHandle, InstancePlan};
use crate::supervisor::process::{self, Running, SpawnSpec};
use crate::supervisor::rollout::{AppContext, AppEvent, CanaryDecision, CanaryTrace, RolloutKind};
use crate::supervisor::store::{AppRecord, InstanceRecord};
use crate::supervisor::strays;
use crate::supervisor::upstream_tls::Wire;

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
        decision: CanaryDecision,
        reply: oneshot::Sender<Response>,
    },
    /// Supervisor shutdown: let go of the instances (they keep running), persist, end.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Supervisor hand-over: like `Shutdown`, but the reply carries the app's proxy, still
    /// serving, for the old supervisor to keep until the new one serves.
    Release {
        reply: oneshot::Sender<Arc<AppContext>>,
    },
}

/// A handle on a running app task.
#[derive(Debug, Clone)]
pub struct AppHandle {
    pub controls: mpsc::Sender<Control>,
    pub context: Arc<AppContext>,
}

/// A rollout in flight, as the app task tracks it.
pub(super) struct RolloutRun {
    pub(super) kind: RolloutKind,
    pub(super) version: String,
    pub(super) reply: Option<oneshot::Sender<Response>>,
    pub(super) phase: watch::Receiver<String>,
    /// Its canary's steps and readings, for `status`.
    pub(super) canary: watch::Receiver<CanaryTrace>,
    /// The live version when it began, and when.
    pub(super) previous: Option<String>,
    pub(super) began: std::time::SystemTime,
    pub(super) task: JoinHandle<Result<DeployOutcome, String>>,
    /// The operator's decisions, for a canary.
    pub(super) decisions: mpsc::Sender<CanaryDecision>,
}

/// The app task's state. Fields are visible to `recovery`, which builds a task from a record.
pub struct AppTask {
    pub(crate) context: Arc<AppContext>,
    pub(crate) record: AppRecord,
    /// Every instance it runs: live, candidates and retiring ones.
    pub(crate) instances: BTreeMap<String, InstanceHandle>,
    /// Ids currently in the proxy's route, to skip needless swaps.
    pub(super) routed: Vec<String>,
    /// Their addresses: an instance that moved to a fresh port is routed anew.
    pub(super) routed_addrs: Vec<SocketAddr>,
    pub(super) rollout: Option<RolloutRun>,
    /// The app task's one channel: its instances' changes and its rollout's requests.
    pub(super) events_tx: mpsc::UnboundedSender<AppEvent>,
    pub(super) events: mpsc::UnboundedReceiver<AppEvent>,
    /// Why the live release is crash-looping and could not be rolled back, for `status`.
    pub(super) stuck: Option<String>,
    /// The share of new clients the running canary's candidates get.
    pub(super) canary: Option<Share>,
    /// The last canary that ended since this supervisor started, for `status`.
    pub(super) last_canary: Option<CanaryStatus>,
}

impl AppTask {
    pub fn new(context: Arc<AppContext>, record: AppRecord) -> AppTask {
        let (events_tx, events) = mpsc::unbounded_channel();
        AppTask {
            context,
            record,
            instances: BTreeMap::new(),
            routed: Vec::new(),
            routed_addrs: Vec::new(),
            rollout: None,
            events_tx,
            events,
            stuck: None,
            canary: None,
            last_canary: None,
        }
    }

    pub(crate) fn persist(&self) {
        if let Err(e) = self.context.store.put(&self.context.name, &self.record) {
            tracing::error!(app = %self.context.name, "{e}");
        }
    }

    /// Copies a (new) pid and port into the record; true if either changed.
    pub(super) fn set_recorded_process(
        &mut self,
        id: &str,
        process: Option<process::ProcessId>,
        port: u16,
    ) -> bool {
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
            Some(r) if r.process != process || r.port != port => {
                r.process = process;
                r.port = port;
                true
            }
            _ => false,
        }
    }

    pub(super) fn is_live(&self, id: &str) -> bool {
        self.record.instances.iter().any(|r| r.id == id)
    }

    pub(crate) fn next_id(&mut self, version: &str) -> String {
        let n = self.record.next_instance;
        self.record.next_instance += 1;
        format!("{}-{version}-{n}", self.context.name)
    }

    /// How to run the instance `record` of a release with `spec`.
    pub(crate) fn plan(
        &self,
        record: &InstanceRecord,
        spec: &AppSpec,
    ) -> std::io::Result<InstancePlan> {
        let logs = self.context.state_dir.join("logs").join(&self.context.name);
        std::fs::create_dir_all(&logs)?;
        let mut env = spec.env.clone();
        env.insert("PORT".to_owned(), record.port.to_string());
        env.extend(strays::marks(
            &self.context.state_dir,
            &self.context.name,
            &record.id,
        ));
        let addr = SocketAddr::new(loopback_for(self.context.listen), record.port);
        // Checked before a deploy; it fails here only if the CA went since (or while the
        // supervisor restarted): the instance still runs, and its HTTP checks fail saying why.
        let wire = Wire::of(spec);
        if let Err(why) = &wire {
            tracing::error!(app = %self.context.name, "{why}; the health checks of {} fail until it can be read", record.id);
        }
        Ok(InstancePlan {
            id: record.id.clone(),
            version: record.version.clone(),
            addr,
            run: spec.run.clone(),
            socket_activation: spec.socket_activation,
            spawn: SpawnSpec {
                command: spec.run.replace("{port}", &record.port.to_string()),
                cwd: crate::protocol::layout::release_dir(&self.record.dest, &record.version),
                env,
                log_path: logs.join(format!("{}.log", record.id)),
            },
            health: spec.health.clone(),
            wire,
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
        let events = self.events_tx.clone();
        let id = plan.id.clone();
        let on_change = Box::new(move || {
            let _ = events.send(AppEvent::InstanceChanged(id.clone()));
        });
        let handle = instance::start(plan, adopted, on_change);
        self.instances.insert(handle.id.clone(), handle.clone());
        handle
    }

    pub(crate) fn route_now(&mut self) {
        self.update_route();
    }
}

/// The file in the app's log directory (`STATE/logs/<app>/`, beside its instances' logs) that
/// the proxy's access log goes to, with `access_log: true`.
pub(super) const ACCESS_LOG: &str = "access.log";

/// Instances listen on the loopback of the listen address's family: the proxy is their only
/// client, and nothing else on the network should reach them around it.
pub fn loopback_for(listen: SocketAddr) -> IpAddr {
    match listen {
        SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        SocketAddr::V4(v4) if v4.ip().is_loopback() => IpAddr::V4(*v4.ip()),
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}
