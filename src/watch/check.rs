//! One check of one watch, start to end: ask the source what is new, choose, verify, deploy,
//! record. The polling loop and `cutover watch --once` both call `check`.
//!
//! Order for GitHub: conditional list (304 → done) → bad list from the supervisor → select →
//! checksum → render → apply → record. For a manifest URL: conditional fetch (304 → done) →
//! its signature, with trusted keys → same content as deployed? → apply → record.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::checksum;
use super::config::{GithubSpec, ManifestSpec, Source, Watch};
use super::context::Context;
use super::deploy::{render, write_atomic, AssetToken, DeployJob};
use super::github::Fetched;
use super::manifest_poll::Polled;
use super::select::{select, Rules};
use super::state::{now_rfc3339, pause_rfc3339, DeployRecord, WatchState};
use super::version::parse_version;
use crate::agent::trust::signature_url;

/// Runs one check of `watch`, updating `state` (the caller saves it).
pub async fn check(ctx: &Context, watch: &Watch, state: &mut WatchState) {
    state.source = watch.describe();
    state.last_check = Some(now_rfc3339());
    let result = match &watch.source {
        Source::Github(spec) => check_github(ctx, watch, spec, state).await,
        Source::Manifest(spec) => check_manifest(ctx, watch, spec, state).await,
    };
    tracing::info!("watch {}: {result}", watch.name);
    state.last_check_result = Some(result);
}

/// Whether GitHub's rate limit still holds this watch back; clears an expired pause.
pub fn paused_until(state: &mut WatchState) -> Option<SystemTime> {
    let until = state
        .paused_until
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok())?;
    if until > SystemTime::now() {
        Some(until)
    } else {
        state.paused_until = None;
        None
    }
}

async fn check_github(
    ctx: &Context,
    watch: &Watch,
    spec: &GithubSpec,
    state: &mut WatchState,
) -> String {
    if let Some(until) = paused_until(state) {
        return format!("rate limited: no request before {}", pause_rfc3339(until));
    }
    let fingerprint = fingerprint(watch);
    if state.config_fingerprint.as_deref() != Some(&fingerprint) {
        state.etag = None;
        state.config_fingerprint = Some(fingerprint);
    }
    let fetched = ctx
        .github
        .releases(&spec.api_url, &spec.repo, state.etag.as_deref())
        .await;
    let (releases, etag) = match fetched {
        Ok(Fetched::NotModified) => {
            state.limit_strikes = 0;
            return "not modified (304)".into();
        }
        Ok(Fetched::Releases {
            releases,
            etag,
            pause_until,
        }) => {
            state.limit_strikes = 0;
            state.paused_until = pause_until.map(pause_rfc3339);
            (releases, etag)
        }
        Err(super::github::GithubError::RateLimited { until, why, .. }) => {
            let until = until.max(SystemTime::now() + strike_pause(state.limit_strikes));
            state.limit_strikes = state.limit_strikes.saturating_add(1);
            let until = pause_rfc3339(until);
            state.paused_until = Some(until.clone());
            return format!("rate limited ({why}): pausing until {until}");
        }
        Err(e) => return format!("error: {e}"),
    };

    // Bad releases (rolled back or failed in the supervisor) and failed deploys are never picked.
    let mut never: BTreeMap<String, String> = state
        .failed
        .iter()
        .map(|(v, why)| (v.clone(), format!("failed to deploy before: {why}")))
        .collect();
    if let Some(app) = watch.app_name() {
        match ctx.bad.bad(&app).await {
            Ok(bad) => {
                for (v, why) in bad {
                    never.insert(v, format!("marked bad by the supervisor: {why}"));
                }
            }
            // Deploying without knowing what was rolled back could bring a bad release back.
            Err(e) => {
                return format!(
                "error: cannot ask the supervisor which releases of {app} are bad: {e}; will retry"
            )
            }
        }
    }
    let deployed = state.deployed.as_deref().and_then(parse_version);
    let rules = Rules::new(spec, &never, deployed.as_ref());
    let selection = select(&releases, &rules);
    state.last_seen = selection.newest.as_ref().map(|v| v.to_string());
    let mut skipped: BTreeMap<String, String> = selection.skipped.into_iter().collect();

    let mut result = match &deployed {
        Some(d) => format!("up to date: {d} deployed"),
        None => "nothing deployable".to_owned(),
    };
    let mut keep_etag = true;
    for cand in &selection.candidates {
        let version = cand.version.to_string();
        let sum = match checksum::resolve(&ctx.github, cand).await {
            Ok(sum) => sum,
            Err(e) if e.is_transient() => {
                // Do not fall back to an older release because a download hiccuped: retry.
                skipped.insert(version.clone(), e.to_string());
                keep_etag = false;
                result = format!("error: {e}; will retry");
                break;
            }
            Err(e) => {
                skipped.insert(version, e.to_string());
                continue;
            }
        };
        // With a token, `src` is the asset's API URL and the agent gets the token for it: the
        // browser URL of a private repository's asset does not take a token.
        let (src, asset_token) = match ctx.github.token() {
            Some(token) => (
                &cand.asset.url,
                Some(AssetToken {
                    url_prefix: format!(
                        "{}/repos/{}/releases/assets/",
                        spec.api_url.trim_end_matches('/'),
                        spec.repo
                    ),
                    token: token.clone(),
                }),
            ),
            None => (&cand.asset.browser_download_url, None),
        };
        let manifest = render(
            watch.template.as_ref().unwrap_or(&Default::default()),
            src,
            &sum,
            &version,
        );
        let text = match serde_norway::to_string(&manifest) {
            Ok(t) => t,
            Err(e) => {
                result = format!("error: cannot render the manifest for {version}: {e}");
                break;
            }
        };
        let job = Prepared {
            version: &version,
            manifest: text.as_bytes(),
            signature: None,
            asset_token,
        };
        let outcome = deploy(ctx, watch, state, job).await;
        if outcome.ok {
            state.deployed = Some(version.clone());
            result = format!("deployed {version}");
        } else {
            state
                .failed
                .insert(version.clone(), outcome.message.clone());
            // Re-list at the next check, so the next older release gets its chance.
            keep_etag = false;
            result = format!("deploy of {version} failed: {}", outcome.message);
        }
        break;
    }
    if let Some(d) = &state.deployed {
        skipped.remove(d);
    }
    state.skipped = skipped;
    if keep_etag {
        state.etag = etag;
    } else {
        state.etag = None;
    }
    result
}

async fn check_manifest(
    ctx: &Context,
    watch: &Watch,
    spec: &ManifestSpec,
    state: &mut WatchState,
) -> String {
    let polled = ctx
        .manifests
        .poll(
            &spec.url,
            state.etag.as_deref(),
            state.last_modified.as_deref(),
        )
        .await;
    let (body, etag, last_modified) = match polled {
        Ok(Polled::NotModified) => return "not modified (304)".into(),
        Ok(Polled::Changed {
            body,
            etag,
            last_modified,
        }) => (body, etag, last_modified),
        Err(e) => return format!("error: {e}"),
    };
    state.etag = etag;
    state.last_modified = last_modified;
    // With trusted keys the manifest goes with its signature, fetched after it: a signature
    // that is missing, or not yet the new one, is looked for again at the next poll.
    let mut signature = None;
    if ctx.signed {
        match ctx
            .manifests
            .poll(&signature_url(&spec.url), None, None)
            .await
        {
            Ok(Polled::Changed { body, .. }) => signature = Some(body),
            Ok(Polled::NotModified) => {}
            Err(e) => {
                forget_validators(state);
                return format!("error: the manifest's signature: {e}; will retry");
            }
        }
    }
    let mut hasher = Sha256::new();
    hasher.update(&body);
    if let Some(signature) = &signature {
        hasher.update(signature);
    }
    let sha = hex::encode(hasher.finalize());
    // The content names the version (with its signature, when signed): a new ETag with the same
    // bytes (a re-upload, another replica) is not a change, a new signature is.
    let version = sha[..12].to_owned();
    state.last_seen = Some(version.clone());
    if state.content_sha256.as_deref() == Some(sha.as_str()) {
        return format!("unchanged: {version} deployed");
    }
    if let Some(why) = state.failed.get(&version).cloned() {
        if ctx.signed {
            forget_validators(state);
        }
        return format!("skipped {version}: failed to deploy before: {why}");
    }
    let job = Prepared {
        version: &version,
        manifest: &body,
        signature: signature.as_deref(),
        asset_token: None,
    };
    let outcome = deploy(ctx, watch, state, job).await;
    if outcome.ok {
        state.content_sha256 = Some(sha);
        state.deployed = Some(version.clone());
        format!("deployed {version}")
    } else {
        state
            .failed
            .insert(version.clone(), outcome.message.clone());
        if ctx.signed {
            // The signature may be replaced while the manifest stays: fetch both again.
            forget_validators(state);
        }
        format!("deploy of {version} failed: {}", outcome.message)
    }
}

/// Makes the next poll fetch the manifest whole instead of getting a 304.
fn forget_validators(state: &mut WatchState) {
    state.etag = None;
    state.last_modified = None;
}

/// What one deploy of a watch hands to `deploy`.
struct Prepared<'a> {
    version: &'a str,
    manifest: &'a [u8],
    /// The manifest's signature, written beside it as `MANIFEST.minisig` for the agent.
    signature: Option<&'a [u8]>,
    asset_token: Option<AssetToken>,
}

/// Writes the manifest under the watch's directory, runs the deployer and records the result.
async fn deploy(
    ctx: &Context,
    watch: &Watch,
    state: &mut WatchState,
    prepared: Prepared<'_>,
) -> super::deploy::DeployResult {
    let version = prepared.version;
    let dir = super::state::dir(&ctx.state_dir).join(&watch.name);
    let job = DeployJob {
        watch: watch.name.clone(),
        version: version.to_owned(),
        manifest: dir.join(format!("manifest-{version}.yml")),
        log: dir.join(format!("deploy-{version}.log")),
        asset_token: prepared.asset_token,
    };
    let signature_path = PathBuf::from(signature_url(&job.manifest.to_string_lossy()));
    let mut written = write_atomic(&job.manifest, prepared.manifest)
        .map_err(|e| format!("cannot write {}: {e}", job.manifest.display()));
    if let (Ok(()), Some(signature)) = (&written, prepared.signature) {
        written = write_atomic(&signature_path, signature)
            .map_err(|e| format!("cannot write {}: {e}", signature_path.display()));
    }
    if let Err(message) = written {
        return super::deploy::DeployResult { ok: false, message };
    }
    // One deploy at a time across watches: two rollouts of one app must not race.
    let _turn = ctx.deploy_turn.lock().await;
    tracing::info!(
        "watch {}: deploying {version} from {}",
        watch.name,
        job.manifest.display()
    );
    state.deploys += 1;
    let outcome = ctx.deployer.deploy(&job).await;
    state.last_result = Some(DeployRecord {
        version: version.to_owned(),
        ok: outcome.ok,
        at: now_rfc3339(),
        message: outcome.message.clone(),
        manifest: PathBuf::from(&job.manifest),
    });
    outcome
}

/// The least pause after `strikes` rate-limit answers in a row: nothing extra for the first
/// (GitHub's own reset or retry-after rules), then 1, 2, 4 … minutes, at most an hour.
fn strike_pause(strikes: u32) -> std::time::Duration {
    if strikes == 0 {
        return std::time::Duration::ZERO;
    }
    let minutes = 1u64 << (strikes - 1).min(6);
    std::time::Duration::from_secs((minutes * 60).min(3600))
}

/// A digest of the settings that decide what is deployed.
fn fingerprint(watch: &Watch) -> String {
    let text = format!("{:?}{:?}", watch.source, watch.template);
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_rate_limits_pause_exponentially_up_to_an_hour() {
        let minutes: Vec<u64> = (0..9).map(|n| strike_pause(n).as_secs() / 60).collect();
        assert_eq!(minutes, [0, 1, 2, 4, 8, 16, 32, 60, 60]);
    }
}
