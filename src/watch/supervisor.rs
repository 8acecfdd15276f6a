//! Which releases the supervisor marked bad (rolled away from, or failed in a rollout), so a
//! watch never brings one back.
//!
//! Behind a trait because the answer comes over the control socket: the watcher asks with a
//! `Releases` request, tests may answer from a table.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;

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
            // PENDING: the control socket client (crate::protocol::client) is not merged yet.
            tracing::warn!(
                "cannot ask the supervisor at {} for bad releases of {app}: no control client in this build",
                self.socket.display()
            );
            Ok(BTreeMap::new())
        })
    }
}
