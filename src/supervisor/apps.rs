//! The supervisor's brain: one task per app, and the registry that routes each request to it.

use std::path::Path;

use tokio::sync::mpsc;

use crate::protocol::{Progress, Request, Response};

/// Every app this supervisor runs. Cheap to share (`Arc` inside); one per supervisor.
#[derive(Debug, Clone)]
pub struct Apps {}

/// Why the supervisor could not start from its state directory.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Todo(String),
}

impl Apps {
    /// Loads the state file in `state_dir` (a corrupt one is set aside loudly), re-adopts live
    /// instances (pid and start time must match), resumes proxies and health checks, and resolves
    /// a deploy that was in progress by stopping the candidate and keeping the stable release.
    pub async fn start(state_dir: &Path) -> Result<Apps, StartError> {
        let _ = state_dir;
        todo!("Apps::start")
    }

    /// Answers one request; the progress lines of a rollout go to `progress` as they happen.
    /// The answer of a deploy or rollback comes when it has succeeded or failed.
    pub async fn handle(&self, request: Request, progress: mpsc::Sender<Progress>) -> Response {
        let _ = (request, progress);
        todo!("Apps::handle")
    }

    /// Stops health checks and proxies and persists the state, but leaves app processes running
    /// so that a restarted supervisor re-adopts them.
    pub async fn shutdown(self) {
        todo!("Apps::shutdown")
    }
}
