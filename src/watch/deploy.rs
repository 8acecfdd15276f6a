//! The deploy step of a watch: render the release into a manifest file and hand it to
//! `cutover apply` as a child process, which runs the whole agent pipeline (download, verify,
//! hooks, place, and the supervisor rollout for `app:` manifests) and says yes or no by exit code.
//!
//! Deploying through the real binary keeps one code path for every way a release arrives, and a
//! crash of the agent cannot take the watcher down with it.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_norway::{Mapping, Value};

use super::github::Token;

/// One deploy to run.
#[derive(Debug, Clone)]
pub struct DeployJob {
    pub watch: String,
    pub version: String,
    /// The manifest file to apply.
    pub manifest: PathBuf,
    /// Where the deploy's output goes.
    pub log: PathBuf,
    /// The GitHub token for the watched repository's release assets, handed to the agent.
    pub asset_token: Option<AssetToken>,
}

/// A token the agent sends only on downloads under `url_prefix` (one repository's release assets
/// through the API), passed in its environment (`CUTOVER_GITHUB_TOKEN`, `CUTOVER_GITHUB_ASSETS`)
/// so that it never shows in a process listing.
#[derive(Debug, Clone)]
pub struct AssetToken {
    pub url_prefix: String,
    pub token: Token,
}

/// How a deploy ended.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployResult {
    pub ok: bool,
    /// On failure the agent's one-line reason (or the command's last line); on success the last
    /// line of output. For status.
    pub message: String,
}

/// Runs deploys. The real one spawns `cutover apply`; tests may substitute their own.
pub trait Deployer: Send + Sync {
    fn deploy<'a>(&'a self, job: &'a DeployJob) -> BoxFuture<'a, DeployResult>;
}

/// `cutover apply MANIFEST` (or the configured `apply_command`), with the watcher's state dir,
/// socket and trusted keys passed on through `CUTOVER_STATE_DIR`/`CUTOVER_SOCKET`/`CUTOVER_TRUST`.
#[derive(Debug, Clone)]
pub struct ApplyCommand {
    pub command: Vec<OsString>,
    pub state_dir: PathBuf,
    pub socket: Option<PathBuf>,
    /// `--trust FILE` of the watcher, when given (the default file needs no passing on).
    pub trust: Option<PathBuf>,
    /// A rollout that takes longer than this is killed and counted as failed.
    pub timeout: Duration,
}

impl ApplyCommand {
    /// The default command: this very binary's `apply` verb.
    pub fn this_binary() -> Vec<OsString> {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("cutover"));
        vec![exe.into_os_string(), OsString::from("apply")]
    }

    async fn run(&self, job: &DeployJob) -> Result<DeployResult, std::io::Error> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or_else(|| std::io::Error::other("apply_command is empty"))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .arg(&job.manifest)
            .env("CUTOVER_STATE_DIR", &self.state_dir)
            .env_remove("CONSUL_INDEX")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(socket) = &self.socket {
            cmd.env("CUTOVER_SOCKET", socket);
        }
        if let Some(trust) = &self.trust {
            cmd.env("CUTOVER_TRUST", trust);
        }
        // Only the watcher's own token reaches the agent, and only for this job's assets.
        cmd.env_remove("CUTOVER_GITHUB_TOKEN")
            .env_remove("CUTOVER_GITHUB_ASSETS");
        if let Some(asset) = &job.asset_token {
            cmd.env("CUTOVER_GITHUB_TOKEN", asset.token.expose())
                .env("CUTOVER_GITHUB_ASSETS", &asset.url_prefix);
        }
        let child = cmd.spawn()?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(out) => out?,
            Err(_) => {
                return Ok(DeployResult {
                    ok: false,
                    message: format!(
                        "deploy did not finish within {}; it was killed",
                        humantime::format_duration(self.timeout)
                    ),
                })
            }
        };
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&job.log)?;
        log.write_all(&out.stdout)?;
        log.write_all(&out.stderr)?;
        let last_output = || {
            last_line(&out.stderr)
                .or_else(|| last_line(&out.stdout))
                .unwrap_or_default()
        };
        // The agent's own verdict, not whatever a failure hook printed after it; a custom
        // apply_command that prints no verdict is summed up by its last line.
        let reason =
            || agent_failure(&out.stderr, &apply_url(&job.manifest)).unwrap_or_else(last_output);
        let message = match (out.status.success(), out.status.code()) {
            (true, _) => last_output(),
            (false, Some(code)) => format!("apply exited {code}: {}", reason()),
            (false, None) => format!("apply was killed by a signal: {}", reason()),
        };
        Ok(DeployResult {
            ok: out.status.success(),
            message,
        })
    }
}

impl Deployer for ApplyCommand {
    fn deploy<'a>(&'a self, job: &'a DeployJob) -> BoxFuture<'a, DeployResult> {
        Box::pin(async move {
            self.run(job).await.unwrap_or_else(|e| DeployResult {
                ok: false,
                message: format!(
                    "cannot run {:?}: {e}; check apply_command",
                    self.command.first().unwrap_or(&OsString::new())
                ),
            })
        })
    }
}

/// The agent's final line when its deploy failed (`cutover: Deploy manifest failed: URL: ERROR`,
/// written by `agent::run` before the failure hooks run) as `ERROR`, the one-line reason: the
/// hooks, and the agent's own "running failure command" lines, come after it on the same stderr.
/// `url` is the manifest's URL as `cutover apply` spells it; another spelling keeps `URL: ERROR`.
fn agent_failure(stderr: &[u8], url: &str) -> Option<String> {
    const VERDICT: &str = "cutover: Deploy manifest failed: ";
    let text = String::from_utf8_lossy(stderr);
    let rest = text
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix(VERDICT))?;
    let reason = rest
        .strip_prefix(url)
        .and_then(|r| r.strip_prefix(": "))
        .unwrap_or(rest);
    Some(reason.chars().take(300).collect())
}

/// The URL `cutover apply PATH` makes of `path` (`file://` and the canonical path), which its
/// verdict line names.
fn apply_url(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    format!("file://{}", path.display())
}

fn last_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(300).collect())
}

/// The template with `src`, `checksum` and (under `app:`) `version` filled in.
pub fn render(template: &Mapping, src: &str, checksum: &str, version: &str) -> Mapping {
    let mut out = Mapping::new();
    out.insert("src".into(), src.into());
    out.insert("checksum".into(), checksum.into());
    for (k, v) in template {
        out.insert(k.clone(), v.clone());
    }
    if let Some(Value::Mapping(app)) = out.get_mut("app") {
        app.insert("version".into(), version.into());
    }
    out
}

/// Writes `text` to `path` atomically, so the agent never reads half a manifest.
pub fn write_atomic(path: &Path, text: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_src_checksum_and_app_version() {
        let t: Mapping = serde_norway::from_str(
            "dest: /srv/shop\ncommands: {pre: [echo hi]}\napp: {name: shop, run: ./shop, listen: ':8080'}",
        )
        .unwrap();
        let m = render(&t, "https://x/shop.tgz", "ab12", "1.4.2");
        let yaml = serde_norway::to_string(&m).unwrap();
        assert!(
            yaml.starts_with("src: https://x/shop.tgz\nchecksum: ab12\ndest: /srv/shop"),
            "{yaml}"
        );
        assert_eq!(m["app"]["version"].as_str(), Some("1.4.2"));
        assert_eq!(m["app"]["name"].as_str(), Some("shop"));
    }

    #[test]
    fn a_failure_is_the_agents_verdict_not_the_hooks_last_line() {
        let stderr = b"cutover: deploying manifest file:///s/m.yml\n\
            cutover: Deploy manifest failed: file:///s/m.yml: checksum mismatch for x: expected a, got b\n\
            cutover: running failure command: notify\n\
            paging the on-call\n";
        assert_eq!(
            agent_failure(stderr, "file:///s/m.yml").as_deref(),
            Some("checksum mismatch for x: expected a, got b")
        );
        assert_eq!(
            agent_failure(stderr, "file:///elsewhere.yml").as_deref(),
            Some("file:///s/m.yml: checksum mismatch for x: expected a, got b")
        );
        assert_eq!(agent_failure(b"rollout failed: unhealthy\n", "u"), None);
    }

    #[test]
    fn a_plain_template_gets_no_app_section() {
        let t: Mapping = serde_norway::from_str("dest: /srv/files").unwrap();
        assert!(render(&t, "s", "c", "1.0.0").get("app").is_none());
    }
}
