//! What every watch task shares (`Context`): the state dir, the GitHub client and manifest poller,
//! the deployer, the supervisor's bad-release list, the one-deploy-at-a-time turn and whether
//! manifests must be signed.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Mutex;

use super::deploy::Deployer;
use super::github::GithubClient;
use super::manifest_poll::ManifestPoller;
use super::supervisor::BadReleases;

/// What every watch task shares.
pub struct Context {
    pub state_dir: PathBuf,
    pub github: GithubClient,
    pub manifests: ManifestPoller,
    pub deployer: Arc<dyn Deployer>,
    pub bad: Arc<dyn BadReleases>,
    /// Held for the length of a deploy: one rollout at a time.
    pub deploy_turn: Mutex<()>,
    /// Trusted keys are configured: a watched manifest is deployed with its `URL.minisig`.
    pub signed: bool,
}
