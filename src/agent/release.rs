//! App mode: a manifest with an `app:` section becomes a release directory under
//! `dest/releases/<version>` and a deploy request to the supervisor, whose result the agent awaits.

use std::path::Path;

use super::log::RunLog;
use super::pipeline::Staged;
use crate::protocol::AppSpec;

/// Everything the agent hands over for one app release.
#[derive(Debug)]
pub struct AppRelease<'a> {
    pub app: &'a AppSpec,
    /// The app's home: `releases/`, `current`, `shared/` live here.
    pub dest: &'a Path,
    /// The verified, unpacked archive.
    pub staged: Staged,
    /// The supervisor's control socket.
    pub socket: &'a Path,
}

/// Moves the staged tree into `dest/releases/<version>`, asks the supervisor to roll it out,
/// logs the rollout's progress and returns when it has succeeded or failed.
pub async fn deploy(release: AppRelease<'_>, log: &RunLog) -> anyhow::Result<()> {
    let _ = (release, log);
    todo!("release::deploy")
}
