//! The rollout contract: what an app task and the rollouts it runs share, so that neither has to
//! import the other. The app task (`supervisor::app`) builds a [`Rollout`] and hands it to a
//! strategy (`deploy::run`, with its canary steps) in a task of its own; the strategy reaches back
//! through [`AppTaskLink`] for the steps that change what the app *is* (recording and starting
//! candidates, a canary's share, the switch), which the app task answers from its loop
//! ([`AppEvent`]). Arrows run app → strategies → this module.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::protocol::app::Strategy;
use crate::protocol::canary::Share;
use crate::protocol::handover::SocketInfo;
use crate::protocol::{AppSpec, Progress};
use crate::supervisor::acme::Manager;
use crate::supervisor::events::Events;
use crate::supervisor::instance::InstanceHandle;
use crate::supervisor::proxy::Proxy;
use crate::supervisor::store::{AppRecord, Store};

use super::canary_trace::CanaryTrace;

/// What an app task and its rollout share; immutable apart from the proxy's own insides.
#[derive(Debug)]
pub struct AppContext {
    pub name: String,
    /// The app's public address, parsed once from its `listen` (`AppSpec::check`).
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub proxy: Proxy,
    pub store: Arc<Store>,
    /// The proxy serves on a socket systemd passed: it is given back, not closed, on a stop.
    pub systemd_socket: bool,
    /// The supervisor's event counters (rollouts, canary steps), for its metrics.
    pub events: Arc<Events>,
    /// Orders the app's certificates when its `tls` says `acme`.
    pub acme: Manager,
    /// The app's HTTPS redirect on a plain-HTTP address (`tls.redirect_from`), if it has one.
    pub redirect: Option<Proxy>,
}

impl AppContext {
    /// The listening sockets the app serves on, with the names a successor supervisor takes them
    /// by: its `listen`, and its HTTPS redirect's ([`redirect_name`]).
    pub fn sockets(&self) -> Vec<(SocketInfo, &Proxy)> {
        let own = SocketInfo {
            name: Some(self.name.clone()),
            systemd: self.systemd_socket,
            admin: false,
        };
        let redirect = self.redirect.as_ref().map(|redirect| {
            let name = Some(redirect_name(&self.name));
            (
                SocketInfo {
                    name,
                    ..SocketInfo::default()
                },
                redirect,
            )
        });
        std::iter::once((own, &self.proxy))
            .chain(redirect)
            .collect()
    }
}

/// The name the HTTPS redirect of `app` goes by on its address (in `status`, in messages, and on
/// its socket across a hand-over).
pub fn redirect_name(app: &str) -> String {
    format!("{app}/redirect")
}

/// Why a rollout runs; it changes the words, what is marked bad on success, nothing else.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutKind {
    Deploy,
    /// `cutover rollback`: the release rolled away from is marked bad once the rollback is live.
    Rollback {
        from: Option<String>,
    },
    /// The live release crash-looped after its switch.
    AutoRollback {
        from: String,
        reason: String,
    },
}

impl RolloutKind {
    /// The release to mark bad, and why, once this rollout is live.
    pub fn rolled_away_from(&self) -> Option<(String, String)> {
        match self {
            RolloutKind::Deploy => None,
            RolloutKind::Rollback { from } => from
                .clone()
                .map(|f| (f, "rolled back by the operator".to_owned())),
            RolloutKind::AutoRollback { from, reason } => Some((from.clone(), reason.clone())),
        }
    }

    /// How `status` names the rollout in progress: "deploying 1.4.2", "rolling back to 1.4.1".
    pub fn doing(&self, version: &str) -> String {
        match self {
            RolloutKind::Deploy => format!("deploying {version}"),
            RolloutKind::Rollback { .. } => format!("rolling back to {version}"),
            RolloutKind::AutoRollback { .. } => {
                format!("automatically rolling back to {version}")
            }
        }
    }
}

impl fmt::Display for RolloutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RolloutKind::Deploy => "deploy",
            RolloutKind::Rollback { .. } => "rollback",
            RolloutKind::AutoRollback { .. } => "automatic rollback",
        })
    }
}

/// What the operator asks of a running canary (`cutover promote`, `cutover abort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryDecision {
    Promote,
    Abort,
}

/// One rollout: what to run, and the ways to report and to reach the app task.
pub struct Rollout {
    pub app: Arc<AppContext>,
    pub link: AppTaskLink,
    pub kind: RolloutKind,
    pub version: String,
    pub spec: AppSpec,
    pub dest: PathBuf,
    /// The live version when the rollout began.
    pub previous: Option<String>,
    pub progress: mpsc::Sender<Progress>,
    /// The step in progress, as `status` shows it.
    pub phase: watch::Sender<String>,
    /// A canary's steps and readings, as `status` and the dashboard show them.
    pub canary: watch::Sender<CanaryTrace>,
    /// `cutover promote` and `cutover abort`, for a canary.
    pub decisions: tokio::sync::Mutex<mpsc::Receiver<CanaryDecision>>,
}

impl Rollout {
    /// A canary runs for a deploy of a canary release over a live one; a rollback (health-gated,
    /// fast) and a first deploy (nothing to compare with) switch at once.
    pub fn is_canary(&self) -> bool {
        self.spec.strategy == Strategy::Canary
            && self.kind == RolloutKind::Deploy
            && self.previous.is_some()
    }

    /// The operator's next decision, if one comes within `wait`.
    pub async fn decision_within(&self, wait: Duration) -> Option<CanaryDecision> {
        let mut decisions = self.decisions.lock().await;
        tokio::time::timeout(wait, decisions.recv())
            .await
            .ok()
            .flatten()
    }

    /// Updates what `status` shows of the step in progress, without a progress line.
    pub fn show(&self, message: String) {
        self.phase
            .send_replace(format!("{}: {message}", self.kind.doing(&self.version)));
    }

    /// One progress line: to the client (if it still listens), the log, and `status`.
    pub async fn say(&self, message: String) {
        tracing::info!(app = %self.app.name, "{}", message);
        self.phase
            .send_replace(format!("{}: {message}", self.kind.doing(&self.version)));
        let progress = Progress {
            app: self.app.name.clone(),
            message,
        };
        // A client that went away does not stop the rollout.
        let _ = self.progress.send(progress).await;
    }
}

/// What the app task hears from its instances and its rollout, on one channel.
#[derive(Debug)]
pub enum AppEvent {
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
        reply: oneshot::Sender<Switchover>,
    },
}

/// What the switch hands back to the rollout: the instances it now drains and stops.
#[derive(Debug)]
pub struct Switchover {
    pub retiring: Vec<InstanceHandle>,
    /// The record after the switch, for pruning.
    pub record: AppRecord,
}

/// The rollout's way back into its app task: each call is an [`AppEvent`] with its reply.
#[derive(Debug, Clone)]
pub struct AppTaskLink {
    events: mpsc::UnboundedSender<AppEvent>,
}

impl AppTaskLink {
    /// A link that sends on the app task's event channel.
    pub fn new(events: mpsc::UnboundedSender<AppEvent>) -> AppTaskLink {
        AppTaskLink { events }
    }

    pub async fn start_candidates(
        &self,
        version: &str,
        spec: &AppSpec,
    ) -> Result<Vec<InstanceHandle>, String> {
        let (reply, answer) = oneshot::channel();
        let event = AppEvent::StartCandidates {
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
            .send(AppEvent::Canary { share, reply })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }

    pub async fn switch(&self, version: &str) -> Result<Switchover, String> {
        let (reply, answer) = oneshot::channel();
        let event = AppEvent::Switch {
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
