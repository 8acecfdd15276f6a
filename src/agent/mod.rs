//! The agent: a one-shot, stretcher-compatible deploy of one manifest.
//!
//! Order of work (the contract in `spec/stretcher-compat.md`): parse input → fetch manifest →
//! fetch `src` (hash + unpack in one streaming pass) → verify → pre hooks → place files → post
//! hooks → [app manifest: deploy request to the supervisor] → success/failure hooks → exit code.
//!
//! With trusted keys (`trust`), the manifest's signature is fetched and checked before its YAML
//! is parsed, and a manifest that is not trusted is refused like a manifest error.
//!
//! This file is that order written out; each step lives in its own module. Input and manifest
//! errors run no hooks; anything after the manifest was accepted ends in the failure hooks.

pub mod checksum;
pub mod durable;
pub mod hooks;
pub mod input;
pub mod last_deploy;
pub mod leftovers;
pub mod limits;
pub mod lock;
pub mod log;
pub mod manifest;
pub mod options;
pub mod pipeline;
pub mod place;
pub mod release;
pub mod replay;
pub mod source;
pub mod stage;
pub mod template;
pub mod trust;
pub mod unpack;
pub mod yaml_depth;

use std::path::{Path, PathBuf};
use std::time::Duration;

use self::hooks::{HookError, Phase};
use self::input::{Event, EventId};
use self::lock::LockError;
use self::log::RunLog;
use self::manifest::{Files, Manifest, ManifestError, SyncStrategy};
use self::pipeline::PipelineError;
use self::place::{PlaceError, RsyncOptions};
use self::source::{FetchError, FetchOptions};
use self::trust::{SignedRelease, TrustError};
use crate::protocol;

pub use self::options::{Mode, Options};

/// How a run ended; the CLI maps it to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    /// The event was a replay of one already handled: nothing was done.
    Skipped,
    /// The manifest is not trusted (trusted keys are configured): nothing of it was run.
    Refused,
}

/// Why the manifest could not even be read: these end the run without hooks.
#[derive(Debug, thiserror::Error)]
enum ManifestLoadError {
    #[error("could not fetch manifest: {0}")]
    Fetch(#[from] FetchError),
    #[error("manifest is not UTF-8 text: check that the URL points at the YAML manifest")]
    NotUtf8,
    #[error(transparent)]
    Invalid(#[from] ManifestError),
    #[error(transparent)]
    Untrusted(#[from] TrustError),
}

/// A parsed manifest and, with trusted keys, what its signature vouches for.
struct Loaded {
    manifest: Manifest,
    signed: Option<SignedRelease>,
}

/// Why a deploy failed after its manifest was accepted: these run the failure hooks.
#[derive(Debug, thiserror::Error)]
enum DeployError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(transparent)]
    Place(#[from] PlaceError),
    #[error("could not create dest {path}: {source}")]
    CreateDest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("app release failed: {0:#}")]
    Release(anyhow::Error),
    /// A newer signed version was deployed while this run waited for the lock: refused, no hooks.
    #[error(transparent)]
    Untrusted(TrustError),
}

/// Deploys the manifest `event` points at, from replay check to success/failure hooks.
pub async fn run(event: &Event, opts: &Options, log: &RunLog) -> Outcome {
    let url = event.url.as_str();
    if let Some(skip) = replay_of(event, opts) {
        log.line(skip);
        return Outcome::Skipped;
    }
    match &event.identity {
        Some(id) => log.line(format!("deploying manifest {url} from {id}")),
        None => log.line(format!("deploying manifest {url}")),
    }
    let Loaded { manifest, signed } = match load_manifest(url, opts, log).await {
        Ok(loaded) => loaded,
        Err(err) => {
            // Manifest errors run no hooks: the hooks themselves come from the manifest, and an
            // untrusted manifest's hooks are whatever its author wanted run.
            log.error(format!("Deploy manifest failed: {url}: {err}"));
            return match err {
                ManifestLoadError::Untrusted(_) => Outcome::Refused,
                _ => Outcome::Failed,
            };
        }
    };
    for warning in &manifest.warnings {
        log.warning(warning);
    }
    let started = std::time::Instant::now();
    if opts.mode == Mode::StageOnly {
        // No hook either way: staging changes nothing that runs, so there is nothing to announce.
        return match stage::run(&manifest, opts, log).await {
            Ok(()) => {
                log.line(format!("Stage manifest succeeded: {url}"));
                Outcome::Succeeded
            }
            Err(err) => {
                log.error(format!("Stage manifest failed: {url}: {err}"));
                Outcome::Failed
            }
        };
    }
    let result = deploy(&manifest, signed.as_ref(), event, opts, log).await;
    match &result {
        Ok(Outcome::Skipped) => return Outcome::Skipped,
        Err(DeployError::Untrusted(err)) => {
            log.error(format!("Deploy manifest failed: {url}: {err}"));
            return Outcome::Refused;
        }
        _ => {}
    }
    let (outcome, phase, lines) = match result {
        Ok(_) => {
            log.line(format!("Deploy manifest succeeded: {url}"));
            (
                Outcome::Succeeded,
                Phase::Success,
                &manifest.commands.success,
            )
        }
        Err(err) => {
            log.error(format!("Deploy manifest failed: {url}: {err}"));
            (Outcome::Failed, Phase::Failure, &manifest.commands.failure)
        }
    };
    record_last_deploy(&manifest, opts, outcome, started.elapsed(), log);
    // Every command gets the same log: the run up to and including the final line.
    let text = log.contents();
    if let Err(err) = hooks::run_notify(phase, lines, &opts.start_dir, &text, log).await {
        log.line(format!("{err}: the deploy's result stands"));
    }
    outcome
}

/// Writes the deploy's outcome to the metrics textfile; a failure to do so is said, and the
/// deploy's result stands.
fn record_last_deploy(
    manifest: &Manifest,
    opts: &Options,
    outcome: Outcome,
    took: Duration,
    log: &RunLog,
) {
    let app = manifest
        .files
        .as_ref()
        .and_then(|files| files.app.as_ref())
        .map_or("", |app| app.name.as_str());
    let dest = manifest.files.as_ref().map_or(String::new(), |files| {
        opts.start_dir.join(&files.dest).display().to_string()
    });
    let deploy = last_deploy::LastDeploy::new(app, &dest, outcome == Outcome::Succeeded, took);
    if let Err(err) = last_deploy::record(&opts.state_dir, &opts.metrics_textfile, deploy) {
        log.warning(format!(
            "could not write the metrics textfile {}: {err}; check that its directory is writable",
            opts.metrics_textfile.display()
        ));
    }
}

/// The skip message when `event` was handled before and replay protection is on.
fn replay_of(event: &Event, opts: &Options) -> Option<String> {
    let id: &EventId = event.identity.as_ref()?;
    if !opts.replay_protection {
        return None;
    }
    let mark = replay::already_handled(&opts.state_dir, id)?;
    Some(format!(
        "skipping {id}: already handled (last LTime {}, at {}); pass --allow-replays to deploy it again",
        mark.ltime, mark.handled_at
    ))
}

async fn load_manifest(
    url: &str,
    opts: &Options,
    log: &RunLog,
) -> Result<Loaded, ManifestLoadError> {
    // A progress bar for a few hundred bytes is noise.
    let fetch = FetchOptions {
        progress: false,
        ..opts.fetch.clone()
    };
    let bytes = source::fetch_bytes(url, &fetch, log).await?;
    // The signature is checked on the bytes as fetched, before the template or the YAML parser
    // sees them.
    let signed = match opts.trust.keys() {
        Some(keys) => {
            let sig_url = trust::signature_url(url);
            let signature = source::fetch_bytes(&sig_url, &fetch, log)
                .await
                .map_err(|source| TrustError::NoSignature { source })?;
            let release = trust::verify(
                keys,
                &bytes,
                &signature,
                &sig_url,
                std::time::SystemTime::now(),
            )?;
            trust::deployed::check_not_older(&opts.state_dir, &release)?;
            log.line(format!(
                "signature ok: {} {} signed by key {}",
                release.app, release.version, release.key_id
            ));
            Some(release)
        }
        None => None,
    };
    let text = String::from_utf8(bytes).map_err(|_| ManifestLoadError::NotUtf8)?;
    let lookup = |name: &str| std::env::var(name).ok();
    let manifest = manifest::parse(&text, &lookup)?;
    if let Some(release) = &signed {
        trust::check_manifest(release, &manifest)?;
    }
    Ok(Loaded { manifest, signed })
}

/// Everything between an accepted manifest and the final line.
async fn deploy(
    manifest: &Manifest,
    signed: Option<&SignedRelease>,
    event: &Event,
    opts: &Options,
    log: &RunLog,
) -> Result<Outcome, DeployError> {
    let cwd = opts.start_dir.as_path();
    let Some(files) = &manifest.files else {
        log.line("no src: commands-only mode");
        let result = commands_only(manifest, cwd, log).await;
        mark_handled(event, opts, log);
        if result.is_ok() {
            record_signed(signed, event, opts, log);
        }
        return result.map(|()| Outcome::Succeeded);
    };
    let dest = cwd.join(&files.dest);
    let _lock = match lock::acquire(&opts.state_dir, &dest, opts.lock_timeout, log).await {
        Ok(lock) => lock,
        Err(err) => {
            mark_handled(event, opts, log);
            return Err(err.into());
        }
    };
    // Another agent may have handled this very event while we waited for the lock.
    if let Some(skip) = replay_of(event, opts) {
        log.line(skip);
        return Ok(Outcome::Skipped);
    }
    // Another agent may have deployed a newer signed version meanwhile.
    if let Some(release) = signed {
        trust::deployed::check_not_older(&opts.state_dir, release)
            .map_err(DeployError::Untrusted)?;
    }
    let result = async {
        place_files(files, &dest, manifest, opts, log).await?;
        hooks::run_logged(Phase::Post, &manifest.commands.post, cwd, log).await?;
        Ok::<(), DeployError>(())
    }
    .await;
    // Still under the lock, so that an agent waiting with the same event sees the mark, and one
    // waiting with an older signed version sees this one.
    mark_handled(event, opts, log);
    if result.is_ok() {
        record_signed(signed, event, opts, log);
    }
    result.map(|()| Outcome::Succeeded)
}

/// Records a signed manifest's version as deployed: later signed manifests of the app may not be
/// older. A failure to write it does not undo the deploy; it is said.
fn record_signed(signed: Option<&SignedRelease>, event: &Event, opts: &Options, log: &RunLog) {
    let Some(release) = signed else { return };
    if let Err(err) = trust::deployed::record(&opts.state_dir, release, &event.url) {
        log.warning(format!(
            "could not record {} {} as deployed under {}: {err}: check that the state directory is writable (--state-dir)",
            release.app,
            release.version,
            opts.state_dir.display()
        ));
    }
}

async fn commands_only(manifest: &Manifest, cwd: &Path, log: &RunLog) -> Result<(), DeployError> {
    hooks::run_logged(Phase::Pre, &manifest.commands.pre, cwd, log).await?;
    hooks::run_logged(Phase::Post, &manifest.commands.post, cwd, log).await?;
    Ok(())
}

/// Records the event as handled, whatever the deploy's result: a restarted watch must not retry a
/// failed deploy (and rerun its failure hooks) behind the operator's back; a new event deploys
/// again, and `--allow-replays` redeploys an old one.
fn mark_handled(event: &Event, opts: &Options, log: &RunLog) {
    if let Some(id) = &event.identity {
        if let Err(err) = replay::record(&opts.state_dir, id) {
            log.warning(err);
        }
    }
}

/// fetch + verify + unpack → pre → chmod → rsync | mv | app release.
async fn place_files(
    files: &Files,
    dest: &Path,
    manifest: &Manifest,
    opts: &Options,
    log: &RunLog,
) -> Result<(), DeployError> {
    if let Some(app) = &files.app {
        if let Some(version) = stage::reusable(files, app, dest, log) {
            return switch_to_staged(app, &version, dest, manifest, opts, log).await;
        }
    }
    let staging_parent = if files.app.is_some() {
        // The app's home holds releases/: staging inside it keeps the rename on one filesystem.
        std::fs::create_dir_all(dest).map_err(|source| DeployError::CreateDest {
            path: dest.to_path_buf(),
            source,
        })?;
        dest.to_path_buf()
    } else {
        place::staging_parent(dest)?
    };
    // Under the dest lock: staging directories of this dest's name are a killed agent's.
    let prefix = leftovers::staging_prefix(dest);
    leftovers::sweep(&staging_parent, &prefix, log);
    // The pipeline logs its own steps: fetching, verified, unpacked.
    let staged = pipeline::fetch_and_unpack(
        &files.src,
        &files.checksum,
        (&staging_parent, &prefix),
        &opts.fetch,
        &opts.limits,
        log,
    )
    .await?;
    hooks::run_logged(Phase::Pre, &manifest.commands.pre, &opts.start_dir, log).await?;
    place::set_mode(staged.path(), files.dest_mode)?;
    if let Some(app) = &files.app {
        let release = release::AppRelease {
            app,
            dest,
            staged,
            socket: &opts.socket,
            durability: opts.durability,
        };
        return release::deploy(release, log)
            .await
            .map_err(DeployError::Release);
    }
    match files.strategy {
        SyncStrategy::Rsync => {
            let rsync = RsyncOptions {
                excludes: &files.excludes,
                exclude_from: files.exclude_from.as_deref(),
                verbose: opts.rsync_verbose.as_deref(),
            };
            place::rsync(staged.path(), dest, rsync, opts.durability, log).await?;
        }
        SyncStrategy::Mv => place::mv(staged, dest, opts.durability, log)?,
    }
    Ok(())
}

/// pre → the supervisor's rollout of a release `apply --stage-only` already put in place.
async fn switch_to_staged(
    app: &protocol::AppSpec,
    version: &str,
    dest: &Path,
    manifest: &Manifest,
    opts: &Options,
    log: &RunLog,
) -> Result<(), DeployError> {
    hooks::run_logged(Phase::Pre, &manifest.commands.pre, &opts.start_dir, log).await?;
    // The supervisor runs in another directory: hand it an absolute home.
    let dest = std::fs::canonicalize(dest).map_err(|source| {
        DeployError::Release(
            anyhow::Error::new(source).context(format!("resolving dest {}", dest.display())),
        )
    })?;
    release::request_rollout(app, dest, version, &opts.socket, log)
        .await
        .map_err(DeployError::Release)
}
