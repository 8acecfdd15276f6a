//! One task per app: the only owner of the app's record and instances, driven by a closed set of
//! controls, each with a reply (the watchexec "job" shape).
//!
//! The task never waits on a rollout: a deploy or rollback runs as its own task (`deploy::run`)
//! and asks this one, through [`Link`], to start candidates and to switch; meanwhile `status` is
//! answered at once and instance events keep the route right. Instances are tasks too
//! (`instance.rs`), so the app task only ever awaits short things.
//!
//! Here: the task's types and its record and instance bookkeeping. The loop and its handlers are
//! in `controls.rs`, the rollout's side in `rollouts.rs`, the canary's in `canary.rs`, `status`
//! and `logs` in `status.rs`.

mod canary;
mod controls;
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
use crate::protocol::{AppSpec, AppStatus, DeployOutcome, DeployRequest, Progress, Response};
use crate::supervisor::canary::Decision;
use crate::supervisor::deploy::Kind;
use crate::supervisor::process::{self, Running, SpawnSpec};
use crate::supervisor::proxy::Proxy;
use crate::supervisor::store::{AppRecord, InstanceRecord, Store};
use crate::supervisor::strays;

use instance::{InstanceHandle, InstancePlan};

/// What an app task and its rollout share; immutable apart from the proxy's own insides.
#[derive(Debug)]
pub struct AppShared {
    pub name: String,
    pub state_dir: PathBuf,
    pub proxy: Proxy,
    pub store: Arc<Store>,
    /// The proxy serves on a socket systemd passed: it is given back, not closed, on a stop.
    pub systemd_socket: bool,
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
    pub shared: Arc<AppShared>,
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
        env.extend(strays::marks(
            &self.shared.state_dir,
            &self.shared.name,
            &record.id,
        ));
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

/// Instances listen on the loopback of the listen address's family: the proxy is their only
/// client, and nothing else on the network should reach them around it.
pub fn loopback_for(listen: &str) -> IpAddr {
    match listen.parse::<SocketAddr>() {
        Ok(SocketAddr::V6(_)) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        Ok(SocketAddr::V4(v4)) if v4.ip().is_loopback() => IpAddr::V4(*v4.ip()),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}
