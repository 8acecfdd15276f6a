//! Which releases the supervisor marked bad (rolled away from, or failed in a rollout), so a
//! watch never brings one back.
//!
//! Behind a trait because the answer comes over the control socket: the watcher asks with a
//! `Releases` request, tests may answer from a table.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;

use crate::protocol::client::Client;
use crate::protocol::{ErrorKind, ReleaseState, ReleasesRequest, Request, Response};

/// Versions of an app that must not be deployed again, with the reason.
pub trait BadReleases: Send + Sync {
    fn bad<'a>(&'a self, app: &'a str) -> BoxFuture<'a, Result<BTreeMap<String, String>, String>>;
}

/// A fixed table: for tests, and for watches whose template has no `app:` (nothing to ask).
#[derive(Debug, Default, Clone)]
pub struct Fixed(pub BTreeMap<String, BTreeMap<String, String>>);

impl BadReleases for Fixed {
    fn bad<'a>(&'a self, app: &'a str) -> BoxFuture<'a, Result<BTreeMap<String, String>, String>> {
        let table = self.0.get(app).cloned().unwrap_or_default();
        Box::pin(async move { Ok(table) })
    }
}

/// Asks the supervisor listening on `socket`.
pub fn connect(socket: std::path::PathBuf) -> std::sync::Arc<dyn BadReleases> {
    std::sync::Arc::new(Supervisor { socket })
}

/// The supervisor on its control socket (`Request::Releases`, `ReleaseState::Bad`).
#[derive(Debug, Clone)]
pub struct Supervisor {
    pub socket: std::path::PathBuf,
}

impl BadReleases for Supervisor {
    fn bad<'a>(&'a self, app: &'a str) -> BoxFuture<'a, Result<BTreeMap<String, String>, String>> {
        Box::pin(async move {
            let client = Client::connect(&self.socket)
                .await
                .map_err(|e| e.to_string())?;
            let request = Request::Releases(ReleasesRequest {
                app: app.to_owned(),
            });
            match client.request(&request, |_| {}).await {
                Ok(Response::Releases(list)) => Ok(list
                    .releases
                    .into_iter()
                    .filter(|r| r.state == ReleaseState::Bad)
                    .map(|r| {
                        let why = r.reason.unwrap_or_else(|| "rolled back or failed".into());
                        (r.version, why)
                    })
                    .collect()),
                // An app the supervisor never ran has no bad releases yet.
                Ok(Response::Error(e)) if e.kind == ErrorKind::NotFound => Ok(BTreeMap::new()),
                Ok(Response::Error(e)) => Err(e.message),
                Ok(other) => Err(format!(
                    "unexpected answer to a releases request: {other:?}"
                )),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}
