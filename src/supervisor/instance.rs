//! One instance of an app: a small task that keeps its process running (restart with exponential
//! backoff, crash-loop detection), follows its health checker, and publishes what it sees.
//!
//! Its port is `instance_port`'s: a socket handed over, or a move to a fresh port when another
//! process holds it (`{port}`, `PORT`, the address and the backend change; the app task routes
//! to the new one), after which the instance starts again at once, without counting an exit.
//!
//! The app task never owns the process itself: it holds an [`InstanceHandle`] (commands in, a
//! watch of the [`View`] out) and hears "something changed" through the [`OnChange`] it gave
//! (which puts an event on its channel). That keeps the app task free to answer `status` while an
//! instance is being stopped or restarted, and this module free of the app task's types: the
//! app task and its rollouts use instances, instances use neither.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::protocol::app::HealthSpec;
use crate::supervisor::health::{Checker, Health, HealthReport, Probe, Wire};
use crate::supervisor::instance_port::{InstancePort, Moved};
pub use crate::supervisor::lifecycle::{Lifecycle, View};
use crate::supervisor::process::{self, ExitStatus, Running, SpawnSpec};
use crate::supervisor::proxy::Backend;

/// First restart delay; doubled after each exit up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Healthy this long, an instance restarts at [`BACKOFF_MIN`] again after its next exit.
const BACKOFF_RESET: Duration = Duration::from_secs(30);
/// This many exits within [`CRASH_WINDOW`] make an instance crash-looping.
const CRASH_EXITS: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// Called after every change of an instance's view: tells its app task to look again.
pub type OnChange = Box<dyn Fn() + Send + Sync>;

/// Everything needed to run one instance, fixed for its whole life.
#[derive(Debug, Clone)]
pub struct InstancePlan {
    /// `<app>-<version>-<n>`, unique for the app's lifetime.
    pub id: String,
    pub version: String,
    /// Where it listens (loopback, its own port): what the checker probes and the proxy dials.
    pub addr: SocketAddr,
    /// The app's `run` line before `{port}` was substituted into `spawn.command`: a move to a
    /// fresh port substitutes again.
    pub run: String,
    /// Bind the port here and hand the socket over as fd 3 (the app's `socket_activation`).
    pub socket_activation: bool,
    pub spawn: SpawnSpec,
    pub health: HealthSpec,
    /// What health checks with a path speak (the app's `upstream`, over TLS with its trust); an
    /// error (the trust could not be loaded) fails every such check with its reason.
    pub wire: Result<Wire, String>,
    pub stop_signal: String,
    pub stop_timeout: Duration,
}

/// How the app task and a rollout talk to an instance. Cheap to clone.
#[derive(Debug, Clone)]
pub struct InstanceHandle {
    pub id: String,
    pub version: String,
    pub view: watch::Receiver<View>,
    commands: mpsc::Sender<Command>,
}

#[derive(Debug)]
enum Command {
    /// Mark as draining (the route no longer has it); no restart if it exits now.
    Drain { deadline: Instant },
    /// Graceful stop: signal, grace, SIGKILL to the group. Replies when it is gone.
    Stop { reply: oneshot::Sender<()> },
    /// Let go of the process and end the task, leaving the process running (supervisor shutdown).
    Detach,
}

impl InstanceHandle {
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Where it listens now.
    pub fn addr(&self) -> SocketAddr {
        self.view.borrow().addr
    }

    /// What the proxy routes to for this instance now.
    pub fn backend(&self) -> Arc<Backend> {
        self.view.borrow().backend.clone()
    }

    pub async fn drain(&self, deadline: Instant) {
        let _ = self.commands.send(Command::Drain { deadline }).await;
    }

    /// Stops the instance and waits until its process is gone; an ended task is already stopped.
    pub async fn stop(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Stop { reply }).await.is_ok() {
            let _ = done.await;
        }
    }

    pub async fn detach(&self) {
        let _ = self.commands.send(Command::Detach).await;
    }
}

/// Starts the instance task: spawns the process (or takes over `adopted`, which is never
/// restarted while it runs) and supervises it until stopped or detached.
pub fn start(plan: InstancePlan, adopted: Option<Running>, on_change: OnChange) -> InstanceHandle {
    let view = View {
        lifecycle: Lifecycle::Starting {
            since: Instant::now(),
        },
        addr: plan.addr,
        backend: backend_at(&plan, plan.addr),
        process: adopted.as_ref().map(|r| r.id),
        restarts: 0,
        exits: 0,
        last_failure: None,
        crash_loop: None,
    };
    let (view_tx, view_rx) = watch::channel(view);
    let (commands_tx, commands) = mpsc::channel(8);
    let handle = InstanceHandle {
        id: plan.id.clone(),
        version: plan.version.clone(),
        view: view_rx,
        commands: commands_tx,
    };
    let task = InstanceTask {
        view: view_tx,
        on_change,
        commands,
        exits: VecDeque::new(),
        backoff: BACKOFF_MIN,
        healthy_since: None,
        retiring: false,
        port: InstancePort::new(plan.addr, &plan.run, plan.socket_activation),
        plan,
    };
    tokio::spawn(task.run(adopted));
    handle
}

fn backend_at(plan: &InstancePlan, addr: SocketAddr) -> Arc<Backend> {
    Arc::new(Backend {
        id: plan.id.clone(),
        version: plan.version.clone(),
        addr,
    })
}

struct InstanceTask {
    plan: InstancePlan,
    view: watch::Sender<View>,
    on_change: OnChange,
    commands: mpsc::Receiver<Command>,
    /// When recent exits happened, for crash-loop detection.
    exits: VecDeque<Instant>,
    backoff: Duration,
    /// When the current run became healthy, if it did.
    healthy_since: Option<Instant>,
    /// Draining: an exit now is the end, not a crash to restart from.
    retiring: bool,
    /// Where it listens, and the socket handed over, if any.
    port: InstancePort,
}

/// How one run of the process ended.
enum RunEnd {
    Exited(ExitStatus),
    Stopped,
    Detached,
}

impl InstanceTask {
    async fn run(mut self, mut adopted: Option<Running>) {
        loop {
            let started = match adopted.take() {
                Some(running) => Ok(running),
                None => match self.port.before_start(&mut self.plan.spawn) {
                    Ok(moved) => {
                        if let Some(moved) = moved {
                            self.moved(moved);
                        }
                        process::spawn(&self.plan.spawn, self.port.socket())
                    }
                    Err(e) => Err(e),
                },
            };
            let status = match started {
                Ok(mut running) => {
                    self.update(|v| v.process = Some(running.id));
                    match self.supervise(&mut running).await {
                        RunEnd::Exited(status) => Some(status),
                        RunEnd::Stopped | RunEnd::Detached => return,
                    }
                }
                Err(e) => {
                    let why = format!("could not start `{}`: {e}", self.plan.spawn.command);
                    self.update(|v| v.last_failure = Some(why));
                    None
                }
            };
            if self.retiring {
                self.transition(Lifecycle::Stopped { status });
                self.wait_for_stop().await;
                return;
            }
            // The app could not bind its port because another process holds it: not the app's
            // fault, so no exit is counted (a candidate with one fails its rollout).
            if let Some(moved) = status
                .is_some()
                .then(|| self.port.after_exit(&mut self.plan.spawn))
                .flatten()
            {
                self.moved(moved);
                continue;
            }
            let restart_in = self.record_exit(status.clone());
            if !self.pause(restart_in).await {
                return;
            }
            self.update(|v| v.restarts += 1);
        }
    }

    /// Follows one process until it exits or a command ends it.
    async fn supervise(&mut self, running: &mut Running) -> RunEnd {
        self.transition(Lifecycle::Starting {
            since: Instant::now(),
        });
        let probe = Probe::for_spec(&self.plan.health, self.plan.addr, self.plan.wire.clone());
        let mut checker = Checker::start(probe, &self.plan.health);
        let mut checker_alive = true;
        loop {
            tokio::select! {
                status = running.exited() => {
                    self.update(|v| v.process = None);
                    return RunEnd::Exited(status);
                }
                changed = checker.reports.changed(), if checker_alive => {
                    checker_alive = changed.is_ok();
                    let report = checker.reports.borrow_and_update().clone();
                    self.on_health(report);
                }
                command = self.commands.recv() => match command {
                    Some(Command::Drain { deadline }) => {
                        self.retiring = true;
                        self.transition(Lifecycle::Draining { deadline });
                    }
                    Some(Command::Stop { reply }) => {
                        let status = process::stop(
                            running,
                            &self.plan.stop_signal,
                            self.plan.stop_timeout,
                        )
                        .await;
                        self.update(|v| v.process = None);
                        self.transition(Lifecycle::Stopped { status: Some(status) });
                        let _ = reply.send(());
                        return RunEnd::Stopped;
                    }
                    Some(Command::Detach) | None => return RunEnd::Detached,
                },
            }
        }
    }

    fn on_health(&mut self, report: HealthReport) {
        match &report.last_failure {
            Some(failure) => {
                let failure = failure.clone();
                self.update(|v| v.last_failure = Some(failure));
            }
            // Healthy, and the checks forgot the failures of its boot: so does the view.
            None if report.health == Health::Healthy
                && self.view.borrow().last_failure.is_some() =>
            {
                self.update(|v| v.last_failure = None)
            }
            None => {}
        }
        if self.retiring {
            return;
        }
        let now = Instant::now();
        let next = match report.health {
            Health::Starting => return,
            Health::Healthy => {
                self.healthy_since.get_or_insert(now);
                self.port.healthy();
                self.forget_old_exits(now);
                if self.exits.len() < CRASH_EXITS {
                    self.update(|v| v.crash_loop = None);
                }
                Lifecycle::Healthy { since: now }
            }
            Health::Unhealthy { reason } => {
                self.healthy_since = None;
                Lifecycle::Unhealthy { reason }
            }
        };
        if std::mem::discriminant(&next) != std::mem::discriminant(&self.view.borrow().lifecycle) {
            self.transition(next);
        }
    }

    /// The instance listens at a new address: its checker, backend and route follow.
    fn moved(&mut self, moved: Moved) {
        tracing::warn!(instance = %self.plan.id, "{}", moved.why);
        self.plan.addr = moved.addr;
        let backend = backend_at(&self.plan, moved.addr);
        self.update(|v| {
            v.addr = moved.addr;
            v.backend = backend;
            v.last_failure = Some(moved.why);
        });
    }

    /// Counts an exit, updates backoff and crash-loop state; returns the delay before restarting.
    fn record_exit(&mut self, status: Option<ExitStatus>) -> Duration {
        let now = Instant::now();
        // A long healthy run forgives earlier crashes: the next exit restarts quickly again.
        // A short one does not, or an app that crashes a second after each boot would be
        // restarted at full speed for ever.
        if self
            .healthy_since
            .take()
            .is_some_and(|since| now.duration_since(since) >= BACKOFF_RESET)
        {
            self.backoff = BACKOFF_MIN;
        }
        self.exits.push_back(now);
        self.forget_old_exits(now);
        let restart_in = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        let what = status.as_ref().map_or_else(
            || self.view.borrow().last_failure.clone().unwrap_or_default(),
            ExitStatus::to_string,
        );
        self.update(|v| {
            v.exits += 1;
            v.last_failure = Some(what.clone());
        });
        if self.exits.len() >= CRASH_EXITS {
            let reason = format!(
                "{} exits within {}s, last: {what}",
                self.exits.len(),
                CRASH_WINDOW.as_secs()
            );
            self.update(|v| v.crash_loop = Some(reason.clone()));
            self.transition(Lifecycle::CrashLooping { reason, restart_in });
        } else {
            self.transition(Lifecycle::Exited { status, restart_in });
        }
        restart_in
    }

    fn forget_old_exits(&mut self, now: Instant) {
        while self
            .exits
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            self.exits.pop_front();
        }
    }

    /// Waits out the backoff, still obeying commands. False when the instance must end.
    async fn pause(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                command = self.commands.recv() => match command {
                    Some(Command::Drain { deadline }) => {
                        self.retiring = true;
                        self.transition(Lifecycle::Draining { deadline });
                    }
                    Some(Command::Stop { reply }) => {
                        self.transition(Lifecycle::Stopped { status: None });
                        let _ = reply.send(());
                        return false;
                    }
                    Some(Command::Detach) | None => return false,
                },
            }
        }
    }

    /// A retiring instance whose process already ended: answer the stop that will come.
    async fn wait_for_stop(&mut self) {
        while let Some(command) = self.commands.recv().await {
            match command {
                Command::Stop { reply } => {
                    let _ = reply.send(());
                    return;
                }
                Command::Detach => return,
                Command::Drain { .. } => {}
            }
        }
    }

    fn transition(&self, next: Lifecycle) {
        let was = self.view.borrow().lifecycle.clone();
        if std::mem::discriminant(&was) != std::mem::discriminant(&next) {
            tracing::info!(instance = %self.plan.id, "now {next}, was {was}");
        }
        self.update(|v| v.lifecycle = next);
    }

    /// Changes the view and tells the app task (which recomputes the route and persists pids).
    fn update(&self, change: impl FnOnce(&mut View)) {
        self.view.send_modify(change);
        (self.on_change)();
    }
}
