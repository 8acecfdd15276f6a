//! Asking a running supervisor over its control socket, as the CLI does: deploy an `App`, roll
//! back, status, releases, the live instances' pids, stop; and the helpers that read the
//! answers.

use std::path::Path;

use cutover::protocol::client::Client;
use cutover::protocol::{
    AppStatus, DeployRequest, ErrorKind, Progress, ReleaseInfo, ReleaseState, ReleasesRequest,
    Request, Response, RollbackRequest, StatusRequest, StopRequest,
};

use super::app::App;
use super::supervisor::{Supervisor, ROLLOUT};
use super::wait_until;

impl Supervisor {
    /// Sends one request over the control socket and returns the final response (progress lines
    /// are dropped).
    pub fn request(&self, request: Request) -> Response {
        self.request_watched(request, |_| {})
    }

    /// Sends one request, hands each progress line to `on_progress` as it arrives and returns
    /// the final response.
    pub fn request_watched(
        &self,
        request: Request,
        on_progress: impl FnMut(&Progress),
    ) -> Response {
        block_on(async {
            let client = Client::connect(&self.socket).await.expect("connect");
            client
                .request(&request, on_progress)
                .await
                .expect("request")
        })
    }

    pub fn deploy(&self, app: &App, version: &str) -> Response {
        self.deploy_watched(app, version, |_| {})
    }

    /// Deploys, handing each progress line to `on_progress` as it arrives.
    pub fn deploy_watched(
        &self,
        app: &App,
        version: &str,
        on_progress: impl FnMut(&Progress),
    ) -> Response {
        self.request_watched(deploy_request(app, version), on_progress)
    }

    /// Deploys `version` of a canary app on a thread of `scope` and returns once the canary
    /// waits for the operator (`cutover promote`/`abort`); the thread ends with the deploy's
    /// answer.
    pub fn deploy_until_it_waits<'scope, 'env>(
        &'env self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        app: &'env App,
        version: &'static str,
    ) -> std::thread::ScopedJoinHandle<'scope, Response> {
        let deploy = scope.spawn(move || self.deploy(app, version));
        let waiting = format!("waiting for `cutover promote {}`", app.name);
        wait_until(
            &format!("{version} to wait for the operator"),
            ROLLOUT,
            || self.status(app).phase.contains(&waiting),
        );
        deploy
    }

    /// Deploys and insists it worked.
    pub fn deploy_ok(&self, app: &App, version: &str) {
        match self.deploy(app, version) {
            Response::Deployed(outcome) => assert_eq!(outcome.version, version),
            other => panic!(
                "deploy of {version} should succeed, got {other:?}\n{}",
                self.log()
            ),
        }
    }

    pub fn rollback(&self, app: &App, version: Option<&str>) -> Response {
        self.request(Request::Rollback(RollbackRequest {
            app: app.name.clone(),
            version: version.map(str::to_owned),
        }))
    }

    /// The status of the app named `app`; an error if the supervisor did not answer or did not
    /// know it.
    pub fn try_status(&self, app: &str) -> Result<AppStatus, String> {
        let request = Request::Status(StatusRequest {
            app: Some(app.to_owned()),
        });
        match request_at(&self.socket, &request)? {
            Response::Status(mut report) if report.apps.len() == 1 => Ok(report.apps.remove(0)),
            other => Err(format!("{other:?}")),
        }
    }

    pub fn status(&self, app: &App) -> AppStatus {
        self.try_status(&app.name)
            .unwrap_or_else(|e| panic!("status of {}: {e}", app.name))
    }

    /// The live version of the app named `app`; `None` while it has none or is unknown.
    pub fn live_version(&self, app: &str) -> Option<String> {
        self.try_status(app).ok()?.live_version
    }

    pub fn releases(&self, app: &App) -> Vec<ReleaseInfo> {
        match self.request(Request::Releases(ReleasesRequest {
            app: app.name.clone(),
        })) {
            Response::Releases(list) => list.releases,
            other => panic!("releases of {}: {other:?}", app.name),
        }
    }

    /// Pids of the instances that serve the live release.
    pub fn live_pids(&self, app: &App) -> Vec<u32> {
        let status = self.status(app);
        let live = status.live_version.clone();
        let mut pids: Vec<u32> = status
            .instances
            .iter()
            .filter(|i| Some(&i.version) == live.as_ref())
            .filter_map(|i| i.pid)
            .collect();
        pids.sort();
        pids
    }

    /// Stops every app the supervisor runs, through the control socket (errors ignored: for
    /// cleaning up).
    pub fn stop_apps(&self) {
        let all = Request::Status(StatusRequest { app: None });
        if let Ok(Response::Status(report)) = request_at(&self.socket, &all) {
            for app in report.apps {
                let _ = request_at(&self.socket, &Request::Stop(StopRequest { app: app.name }));
            }
        }
    }
}

/// The request that deploys `version` of `app` (its spec, its home).
pub fn deploy_request(app: &App, version: &str) -> Request {
    Request::Deploy(DeployRequest {
        app: app.spec(version),
        version: version.to_owned(),
        dest: app.dest.clone(),
    })
}

/// Sends `request` to the supervisor on `socket`; an error if it could not answer (it may be
/// killed while the request waits on another thread, or restarting).
pub fn request_at(socket: &Path, request: &Request) -> Result<Response, String> {
    block_on(async {
        let client = Client::connect(socket).await.map_err(|e| e.to_string())?;
        client
            .request(request, |_| {})
            .await
            .map_err(|e| e.to_string())
    })
}

/// The state of `version` in a release list.
pub fn state_of(releases: &[ReleaseInfo], version: &str) -> Option<ReleaseState> {
    releases
        .iter()
        .find(|r| r.version == version)
        .map(|r| r.state)
}

/// The error kind and message of a response that must be an error.
pub fn error_of(response: Response) -> (ErrorKind, String) {
    match response {
        Response::Error(e) => (e.kind, e.message),
        other => panic!("expected an error, got {other:?}"),
    }
}

pub(super) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for one request")
        .block_on(future)
}
