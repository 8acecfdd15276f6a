//! How one agent run behaves (`Options`, built by the CLI from flags and the environment) and
//! what it does with an accepted manifest (`Mode`: deploy, or only stage).

use std::path::PathBuf;
use std::time::Duration;

use super::durable::Durability;
use super::limits::Limits;
use super::source::FetchOptions;
use super::trust::Trust;

/// How one run behaves; built by the CLI from flags and the environment.
#[derive(Debug, Clone)]
pub struct Options {
    /// Retry, timeout and bandwidth for the manifest and the `src` archive.
    pub fetch: FetchOptions,
    /// How large `src` and its unpacked tree may be, and what must stay free on `dest`'s disk.
    pub limits: Limits,
    /// rsync's verbosity option (`-v` by default, as stretcher).
    pub rsync_verbose: Option<String>,
    /// How long to wait for another agent deploying to the same `dest`.
    pub lock_timeout: Duration,
    /// Locks and replay marks live here.
    pub state_dir: PathBuf,
    /// The supervisor's control socket, for manifests with `app:`.
    pub socket: PathBuf,
    /// Where hooks run and relative `dest` paths start: the agent's working directory.
    pub start_dir: PathBuf,
    /// Skip events already handled (Consul/Serf replays).
    pub replay_protection: bool,
    /// Whether manifests must be signed, and by which keys.
    pub trust: Trust,
    /// The textfile-collector file the last deploy of each app and `dest` is written to
    /// (`--metrics-textfile`, by default [`super::last_deploy::default_textfile`]).
    pub metrics_textfile: PathBuf,
    /// Whether files are flushed to disk before they go live (always, but for benchmarks).
    pub durability: Durability,
    /// Deploy, or only stage the release for a later switch.
    pub mode: Mode,
}

/// What a run does with an accepted manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything: fetch, hooks, place, the supervisor's rollout.
    Deploy,
    /// `apply --stage-only`: fetch, verify and unpack an `app:` release into
    /// `dest/releases/VERSION`; no hook, no request to the supervisor (`stage`).
    StageOnly,
}
