//! Release sources beyond events: GitHub releases, watched manifest URLs and GitHub webhooks,
//! run by the resident `cutover watch --config watch.yml` process.
//!
//! Each watch is one task that checks its source every `interval` (or at once when a webhook
//! says so), and on a new version writes a manifest under `state_dir/watch/<name>/` and deploys
//! it with `cutover apply` (`deploy`). What each watch saw and did is kept in `state`, which
//! `cutover status` and `cutover watch --status` print (`status`).
//!
//! ```text
//! github (ETag, rate limits) ─┐                 ┌ checksum (digest | SHA256SUMS)
//! webhook (HMAC) ── wake ─────┼→ check → select ┴→ deploy::render → cutover apply → state
//! manifest_poll (ETag/LM) ────┘
//! ```
//!
//! Beside them: `config` (watch.yml), `version` (a tag as semver), `context` (what every watch
//! task shares), `http_client` (one user agent and timeouts), `supervisor` (the bad-release
//! list). This file is the face and the loop: `run` starts a task per watch, `run_once` checks
//! each once.

pub mod check;
pub mod checksum;
pub mod config;
mod context;
pub mod deploy;
pub mod github;
mod http_client;
pub mod manifest_poll;
pub mod select;
pub mod state;
pub mod status;
pub mod supervisor;
pub mod version;
pub mod webhook;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

pub use config::{Watch, WatchConfig};
pub use context::Context;
pub use deploy::{ApplyCommand, DeployJob, DeployResult, Deployer};
pub use supervisor::BadReleases;

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("webhook secret variable {var} is not set; export it (the same secret as in GitHub's webhook settings) or remove `webhook:`")]
    NoSecret { var: String },
    #[error("cannot listen for webhooks on {addr}: {source}; is another process using the port?")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] state::StateError),
}

/// Runs every watch (and the webhook endpoint) until `shutdown` completes.
pub async fn run(
    config: WatchConfig,
    watches: Vec<Watch>,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WatchError> {
    let wakeups: Vec<Arc<Notify>> = watches.iter().map(|_| Arc::new(Notify::new())).collect();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(spec) = &config.webhook {
        let secret = std::env::var(&spec.secret_env)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| WatchError::NoSecret {
                var: spec.secret_env.clone(),
            })?;
        let mut repos: HashMap<String, Vec<Arc<Notify>>> = HashMap::new();
        for (watch, wake) in watches.iter().zip(&wakeups) {
            if let config::Source::Github(g) = &watch.source {
                repos.entry(g.repo.clone()).or_default().push(wake.clone());
            }
        }
        let listener = tokio::net::TcpListener::bind(spec.listen)
            .await
            .map_err(|source| WatchError::Listen {
                addr: spec.listen,
                source,
            })?;
        let hook = Arc::new(webhook::Webhook::new(webhook::Secret::new(secret), repos));
        tracing::info!("webhook endpoint listening on {}", spec.listen);
        tasks.spawn(webhook::serve(listener, hook));
    }
    for (watch, wake) in watches.into_iter().zip(wakeups) {
        tasks.spawn(watch_loop(ctx.clone(), watch, wake));
    }
    shutdown.await;
    // Let a deploy in flight finish: killing the agent halfway through an rsync would leave
    // `dest` half old, half new. The lock is fair, so this waits for the running deploy only;
    // checks queued behind it are dropped with their tasks.
    if ctx.deploy_turn.try_lock().is_err() {
        tracing::info!("watch: waiting for the deploy in progress to finish before exiting");
    }
    let _turn = ctx.deploy_turn.lock().await;
    tasks.shutdown().await;
    Ok(())
}

/// Checks every watch once, one after the other, and returns their states (for cron and tests).
pub async fn run_once(
    watches: &[Watch],
    ctx: &Context,
) -> Result<Vec<state::WatchState>, WatchError> {
    let mut out = Vec::new();
    for watch in watches {
        let mut st = state::load(&ctx.state_dir, &watch.name);
        check::check(ctx, watch, &mut st).await;
        state::save(&ctx.state_dir, &st)?;
        out.push(st);
    }
    Ok(out)
}

/// One watch, forever: check, save, sleep until the next interval, a webhook, or the end of a
/// rate-limit pause (a webhook cannot cut a pause short: GitHub would only refuse again).
async fn watch_loop(ctx: Arc<Context>, watch: Watch, wake: Arc<Notify>) {
    let mut st = state::load(&ctx.state_dir, &watch.name);
    loop {
        check::check(&ctx, &watch, &mut st).await;
        if let Err(e) = state::save(&ctx.state_dir, &st) {
            tracing::error!("watch {}: {e}", watch.name);
        }
        let pause =
            check::paused_until(&mut st).and_then(|t| t.duration_since(SystemTime::now()).ok());
        match pause {
            Some(pause) => tokio::time::sleep(pause.max(watch.interval())).await,
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(watch.interval().max(Duration::from_millis(10))) => {}
                    _ = wake.notified() => {
                        tracing::info!("watch {}: woken by a webhook", watch.name);
                    }
                }
            }
        }
    }
}
