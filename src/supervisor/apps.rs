//! The supervisor's brain: the registry of app tasks, and the one `match` that routes each
//! request to the task of its app (creating it on an app's first deploy).
//!
//! There is no shared lock over the apps' state: each app task owns its record and instances and
//! answers through a oneshot. The registry's map is locked only to look up or insert a handle.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::protocol::{
    DeployRequest, ErrorKind, ErrorReply, Progress, Request, Response, StatusReport,
};
use crate::supervisor::acme::Manager;
use crate::supervisor::app::{AppHandle, AppTask, Control};
use crate::supervisor::events::Events;
use crate::supervisor::listeners::{same_address, Inherited, Listeners};
use crate::supervisor::recovery;
use crate::supervisor::rollout::{deploy, AppContext, CanaryDecision};
use crate::supervisor::sharing;
use crate::supervisor::store::{AppRecord, Store, StoreError};
use crate::supervisor::strays::Strays;

/// Every app this supervisor runs. Cheap to share (`Arc` inside); one per supervisor.
#[derive(Debug, Clone)]
pub struct Apps {
    registry: Arc<Registry>,
}

/// What every clone of [`Apps`] shares: the app tasks by name, and what a new one starts from.
#[derive(Debug)]
struct Registry {
    state_dir: PathBuf,
    store: Arc<Store>,
    tasks: Mutex<BTreeMap<String, AppHandle>>,
    /// Sockets passed by systemd or by the previous supervisor that no app has taken yet.
    inherited: std::sync::Mutex<Listeners>,
    setup: AppsSetup,
}

/// What the apps share with the supervisor around them.
#[derive(Debug, Clone, Default)]
pub struct AppsSetup {
    /// The supervisor's event counters (rollouts, canary steps), for its metrics.
    pub events: Arc<Events>,
    /// The admin address (`--metrics-listen`), which no app may listen on.
    pub admin: Option<SocketAddr>,
    /// Certificates ordered over ACME, for the apps that ask.
    pub acme: Manager,
}

/// How long a stopping supervisor lets its proxies' client connections finish (each is asked to
/// close after its next response) before it shuts the rest down.
pub const CLIENT_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a supervisor that hands over lets go of: every app's proxy, still serving, and the
/// inherited sockets no app took.
#[derive(Debug)]
pub struct Released {
    pub apps: Vec<Arc<AppContext>>,
    pub unclaimed: Vec<Inherited>,
}

/// Why the supervisor could not start from its state directory.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the admin address {admin} (--metrics-listen) is app {app}'s public address ({listen}): pick another admin address")]
    AdminAddress {
        admin: SocketAddr,
        app: String,
        listen: SocketAddr,
    },
}

impl Apps {
    /// Loads the state file in `state_dir` (a corrupt one is set aside loudly), re-adopts live
    /// instances (pid and start time must match), resumes proxies and health checks, and resolves
    /// a deploy that was in progress by stopping the candidate and keeping the stable release.
    pub async fn start(state_dir: &Path) -> Result<Apps, StartError> {
        Apps::start_with(state_dir, Listeners::default(), AppsSetup::default()).await
    }

    /// [`Apps::start`], with listening sockets passed by systemd or a previous supervisor (an
    /// app whose socket is among them serves on it instead of binding its address) and what
    /// the apps share with the supervisor (`setup`). An app listening on the admin address
    /// stops the start: one of the two must move.
    pub async fn start_with(
        state_dir: &Path,
        inherited: Listeners,
        setup: AppsSetup,
    ) -> Result<Apps, StartError> {
        let store = Arc::new(Store::open(state_dir)?);
        if let Some(admin) = setup.admin {
            for (app, record) in store.snapshot().apps {
                if let Ok(listen) = record.spec.listen_addr() {
                    if same_address(admin, listen) {
                        return Err(StartError::AdminAddress { admin, app, listen });
                    }
                }
            }
        }
        let inherited = std::sync::Mutex::new(inherited);
        let mut tasks = BTreeMap::new();
        let mut strays = Strays::scan(state_dir);
        let mut stops = BTreeMap::new();
        for (name, record) in store.snapshot().apps {
            stops.insert(
                name.clone(),
                (record.spec.stop_signal.clone(), record.spec.stop_timeout),
            );
            // The stored `listen` passed `AppSpec::check` when it was deployed.
            let bound = match record.spec.listen_addr() {
                Ok(listen) => {
                    let sharing = sharing::neighbour(tasks.values(), listen);
                    sharing::bind(&record.spec, listen, &inherited, &setup.acme, sharing)
                        .map(|(proxy, systemd_socket)| (listen, proxy, systemd_socket))
                        .map_err(|e| e.message)
                }
                Err(why) => Err(why),
            };
            let (listen, proxy, systemd_socket) = match bound {
                Ok(bound) => bound,
                Err(why) => {
                    // Its instances keep running; a later deploy or restart can take it back.
                    tracing::error!(app = %name, "cannot resume: {why}");
                    strays.keep(record.instances.iter().map(|i| i.id.as_str()));
                    continue;
                }
            };
            let redirect = sharing::redirect(
                &record.spec,
                listen,
                tasks.values(),
                &inherited,
                &setup.acme,
            )
            .unwrap_or_else(|e| {
                // The app serves on; only its plain-HTTP redirect is missing.
                tracing::error!(app = %name, "no HTTPS redirect: {}", e.message);
                None
            });
            let context = Arc::new(AppContext {
                name: name.clone(),
                listen,
                state_dir: state_dir.to_owned(),
                proxy,
                store: store.clone(),
                systemd_socket,
                events: setup.events.clone(),
                acme: setup.acme.clone(),
                redirect,
            });
            tasks.insert(
                name,
                recovery::resume(context.clone(), record, &mut strays).await,
            );
            // A passed socket already has clients waiting: they are let in once the route is set.
            context.proxy.start_accepting();
        }
        if !strays.is_empty() {
            // They hold nothing the apps need (each its own port): serving does not wait.
            tokio::spawn(async move { strays.stop_all(&stops).await });
        }
        Ok(Apps {
            registry: Arc::new(Registry {
                state_dir: state_dir.to_owned(),
                store,
                tasks: Mutex::new(tasks),
                inherited,
                setup,
            }),
        })
    }

    /// Answers one request; the progress lines of a rollout go to `progress` as they happen.
    /// The answer of a deploy or rollback comes when it has succeeded or failed.
    pub async fn handle(&self, request: Request, progress: mpsc::Sender<Progress>) -> Response {
        let result = match request {
            Request::Deploy(deploy) => self.deploy(deploy, progress).await,
            Request::Status(status) => self.status(status.app).await,
            Request::Releases(r) => self.ask(&r.app, |reply| Control::Releases { reply }).await,
            Request::Rollback(r) => {
                let version = r.version;
                self.ask(&r.app, |reply| Control::Rollback {
                    version,
                    progress,
                    reply,
                })
                .await
            }
            Request::Logs(r) => self.ask(&r.app, |reply| Control::Logs { reply }).await,
            Request::Promote(r) => {
                let decision = CanaryDecision::Promote;
                self.ask(&r.app, |reply| Control::Decide { decision, reply })
                    .await
            }
            Request::Abort(r) => {
                let decision = CanaryDecision::Abort;
                self.ask(&r.app, |reply| Control::Decide { decision, reply })
                    .await
            }
            Request::Stop(r) => {
                let response = self.ask(&r.app, |reply| Control::Stop { reply }).await;
                let task = self.registry.tasks.lock().await.remove(&r.app);
                if let (Some(task), Ok(Response::Stopped(_))) = (task, &response) {
                    self.give_back_socket(&task.context).await;
                }
                response
            }
        };
        result.unwrap_or_else(Response::Error)
    }

    /// Every app's context (name, proxy, counters), for reading without asking its task.
    pub async fn contexts(&self) -> Vec<Arc<AppContext>> {
        let tasks = self.registry.tasks.lock().await;
        tasks.values().map(|task| task.context.clone()).collect()
    }

    /// Stops health checks and proxies and persists the state, but leaves app processes running
    /// so that a restarted supervisor re-adopts them. Client connections are let go of without
    /// failing a request (see [`Proxy::close`]), within [`CLIENT_CLOSE_TIMEOUT`].
    ///
    /// [`Proxy::close`]: crate::supervisor::proxy::Proxy::close
    pub async fn shutdown(self) {
        let released = self.release().await;
        close_all(&released.apps, Leave::Promptly).await;
    }

    /// Lets go of every app like [`Apps::shutdown`] (instances keep running, the state is
    /// persisted), but returns their proxies still accepting and serving: a hand-over keeps them
    /// until the next supervisor serves.
    pub async fn release(self) -> Released {
        let tasks = std::mem::take(&mut *self.registry.tasks.lock().await);
        let mut apps = Vec::new();
        for (name, task) in tasks {
            let (reply, done) = oneshot::channel();
            if task.controls.send(Control::Release { reply }).await.is_ok() {
                if let Ok(context) = done.await {
                    apps.push(context);
                }
            }
            tracing::info!(app = %name, "let go of the app; its instances keep running");
        }
        if let Err(e) = self.registry.store.flush() {
            tracing::error!("{e}");
        }
        let unclaimed = lock(&self.registry.inherited).take_unclaimed();
        Released { apps, unclaimed }
    }

    /// A stopped app's socket that systemd passed goes back to the pool, for a later deploy on
    /// its address: systemd keeps the address bound, so closing it would free nothing and leave
    /// the next bind failing.
    async fn give_back_socket(&self, app: &AppContext) {
        // Apps still on the address keep serving it.
        if !app.systemd_socket || app.proxy.routes().len() > 1 {
            return;
        }
        match app.proxy.listener() {
            Ok(listener) => {
                app.proxy.stop_accepting().await;
                lock(&self.registry.inherited).give_back(Inherited {
                    name: Some(app.name.clone()),
                    addr: app.proxy.local_addr,
                    listener,
                    systemd: true,
                });
            }
            Err(e) => tracing::error!(app = %app.name, "cannot keep its systemd socket: {e}"),
        }
    }

    async fn deploy(
        &self,
        request: DeployRequest,
        progress: mpsc::Sender<Progress>,
    ) -> Result<Response, ErrorReply> {
        let name = request.app.name.clone();
        if let (Some(admin), Ok(listen)) = (self.registry.setup.admin, request.app.listen_addr()) {
            if same_address(admin, listen) {
                return Err(ErrorReply {
                    kind: ErrorKind::BadRequest,
                    message: format!(
                        "{name} cannot listen on {listen}: it is the supervisor's admin address (--metrics-listen {admin}); pick another listen"
                    ),
                });
            }
        }
        sharing::check_beside(&self.registry.store.snapshot(), &request.app)?;
        let task = {
            let mut tasks = self.registry.tasks.lock().await;
            match tasks.get(&name) {
                Some(task) if !task.controls.is_closed() => task.clone(),
                _ => {
                    let task = self.create(&request, &tasks).await?;
                    tasks.insert(name.clone(), task.clone());
                    task
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        let control = Control::Deploy {
            request: Box::new(request),
            progress,
            reply,
        };
        send(&name, &task, control, answer).await
    }

    /// The first deploy of an app: take its place on its public address (beside the apps that
    /// serve there in `tasks`, or bound anew), then start its task.
    async fn create(
        &self,
        request: &DeployRequest,
        tasks: &BTreeMap<String, AppHandle>,
    ) -> Result<AppHandle, ErrorReply> {
        let listen = deploy::validate(request, None)?;
        let sharing = sharing::neighbour(tasks.values(), listen);
        let (inherited, acme) = (&self.registry.inherited, &self.registry.setup.acme);
        let (proxy, systemd_socket) =
            sharing::bind(&request.app, listen, inherited, acme, sharing)?;
        proxy.start_accepting();
        let redirect = sharing::redirect(&request.app, listen, tasks.values(), inherited, acme)?;
        let record = AppRecord::new(request.app.clone(), request.dest.clone());
        let context = Arc::new(AppContext {
            name: request.app.name.clone(),
            listen,
            state_dir: self.registry.state_dir.clone(),
            proxy,
            store: self.registry.store.clone(),
            systemd_socket,
            events: self.registry.setup.events.clone(),
            acme: self.registry.setup.acme.clone(),
            redirect,
        });
        tracing::info!(app = %request.app.name, "new app, listening on {}", request.app.listen);
        Ok(AppTask::new(context, record).spawn())
    }

    async fn status(&self, app: Option<String>) -> Result<Response, ErrorReply> {
        let tasks: Vec<(String, AppHandle)> = {
            let tasks = self.registry.tasks.lock().await;
            match &app {
                Some(name) => vec![(name.clone(), lookup(&tasks, name)?)],
                None => tasks.iter().map(|(n, t)| (n.clone(), t.clone())).collect(),
            }
        };
        let mut report = StatusReport::default();
        for (name, task) in tasks {
            let (reply, answer) = oneshot::channel();
            match send(&name, &task, Control::Status { reply }, answer).await {
                Ok(status) => report.apps.push(status),
                // An app stopped between the lookup and the question is simply gone.
                Err(_) if app.is_none() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Response::Status(report))
    }

    /// Sends a control built around its reply to the app's task and waits for the answer.
    async fn ask(
        &self,
        name: &str,
        control: impl FnOnce(oneshot::Sender<Response>) -> Control,
    ) -> Result<Response, ErrorReply> {
        let task = lookup(&*self.registry.tasks.lock().await, name)?;
        let (reply, answer) = oneshot::channel();
        send(name, &task, control(reply), answer).await
    }
}

fn lookup(tasks: &BTreeMap<String, AppHandle>, name: &str) -> Result<AppHandle, ErrorReply> {
    tasks.get(name).cloned().ok_or_else(|| not_found(name))
}

async fn send<T>(
    name: &str,
    task: &AppHandle,
    control: Control,
    answer: oneshot::Receiver<T>,
) -> Result<T, ErrorReply> {
    task.controls
        .send(control)
        .await
        .map_err(|_| not_found(name))?;
    answer.await.map_err(|_| not_found(name))
}

fn not_found(name: &str) -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::NotFound,
        message: format!("no app named {name} on this supervisor; `cutover status` lists them"),
    }
}

/// Stops every proxy accepting and lets their client connections go, concurrently.
///
/// `Leave::Drain`: another proxy serves the same sockets now (a hand-over), so a WebSocket, a
/// TCP-mode connection or a long response on this one runs on until the app's `drain_timeout`,
/// as across a deploy. `Leave::Promptly`: the supervisor stops, and the clients' next
/// supervisor starts only once this one is gone, so whatever is open after
/// [`CLIENT_CLOSE_TIMEOUT`] is shut down.
pub async fn close_all(apps: &[Arc<AppContext>], leave: Leave) {
    let state = apps.first().map(|app| app.store.snapshot());
    let closing = apps.iter().map(|app| {
        let drain_timeout = state
            .as_ref()
            .and_then(|s| s.apps.get(&app.name))
            .map(|record| record.spec.drain_timeout);
        let timeout = match (leave, drain_timeout) {
            (Leave::Drain, Some(drain)) => drain,
            _ => CLIENT_CLOSE_TIMEOUT,
        };
        async move {
            if let Some(redirect) = &app.redirect {
                redirect.close(timeout).await;
            }
            let cut = app.proxy.close(timeout).await;
            if cut > 0 {
                tracing::warn!(app = %app.name, "shut down {cut} client connection(s) still open after {timeout:?}");
            }
        }
    });
    futures_util::future::join_all(closing).await;
}

/// How long [`close_all`] lets long-lived client connections run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Until each app's `drain_timeout`: a new supervisor already serves the sockets.
    Drain,
    /// Within [`CLIENT_CLOSE_TIMEOUT`]: the supervisor is stopping.
    Promptly,
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
