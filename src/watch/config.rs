//! The watch configuration file (`cutover watch --config watch.yml`): which release sources to
//! poll, the manifest template each GitHub release is rendered into, and the webhook endpoint.
//!
//! Everything is checked when the file is loaded (globs compile, names are unique, the template
//! leaves `src` and `checksum` to the watcher), so a running watcher never meets a config error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_norway::{Mapping, Value};

use super::version::parse_version;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// The release sources, each polled by its own task.
    pub watches: Vec<WatchSpec>,
    /// An HTTP endpoint for GitHub `release` webhooks; absent: polling only.
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    /// The command that deploys a rendered manifest; the manifest path is appended.
    /// Default: this very binary's `apply` verb.
    #[serde(default)]
    pub apply_command: Option<Vec<String>>,
}

/// One release source and what to deploy from it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSpec {
    /// Name used in status and for the state file; default: derived from the repo or URL.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub github: Option<GithubSpec>,
    #[serde(default)]
    pub manifest: Option<ManifestSpec>,
    /// The manifest without `src`, `checksum` and `app.version`, which come from the release.
    #[serde(default)]
    pub template: Option<Mapping>,
}

/// A GitHub repository whose releases are deployed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubSpec {
    /// `OWNER/REPO`.
    pub repo: String,
    /// Glob choosing the release asset to deploy, e.g. `shop-*-linux-amd64.tar.gz`.
    pub asset: String,
    /// Whether releases marked as prereleases are candidates.
    #[serde(default)]
    pub prereleases: bool,
    /// Versions never deployed (written as in the tag, with or without a leading `v`).
    #[serde(default)]
    pub ignore: Vec<String>,
    #[serde(default = "default_github_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Glob naming a `SHA256SUMS`-style asset; absent: the asset's `digest` field is used.
    #[serde(default)]
    pub checksums_asset: Option<String>,
    /// REST API base; GitHub Enterprise servers and tests point it elsewhere.
    #[serde(default = "default_api_url")]
    pub api_url: String,
}

/// A manifest URL deployed whenever its content changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSpec {
    /// `s3://bucket/key`, `http://…` or `https://…`.
    pub url: String,
    #[serde(default = "default_manifest_interval", with = "humantime_serde")]
    pub interval: Duration,
}

/// The webhook endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// Address to listen on, e.g. `127.0.0.1:9090` (put a TLS proxy in front for the internet).
    pub listen: SocketAddr,
    /// Name of the environment variable holding the webhook secret (never the secret itself, so
    /// the config file can be world-readable).
    #[serde(default = "default_secret_env")]
    pub secret_env: String,
}

/// Where a watch's releases come from, after validation.
#[derive(Debug, Clone)]
pub enum Source {
    Github(GithubSpec),
    Manifest(ManifestSpec),
}

/// One validated watch.
#[derive(Debug, Clone)]
pub struct Watch {
    pub name: String,
    pub source: Source,
    /// Present for GitHub watches (checked), absent for manifest watches.
    pub template: Option<Mapping>,
}

impl Watch {
    pub fn interval(&self) -> Duration {
        match &self.source {
            Source::Github(g) => g.interval,
            Source::Manifest(m) => m.interval,
        }
    }

    /// One line naming the source, for status and logs.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Github(g) => format!("github {} asset {}", g.repo, g.asset),
            Source::Manifest(m) => format!("manifest {}", m.url),
        }
    }

    /// The `app.name` of the template, used to ask the supervisor which releases are bad.
    pub fn app_name(&self) -> Option<String> {
        let app = self.template.as_ref()?.get("app")?;
        app.get("name")?.as_str().map(str::to_owned)
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read watch config {path}: {source}; check the --config path")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("watch config {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_norway::Error,
    },
    #[error("watch config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn default_github_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_manifest_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_api_url() -> String {
    "https://api.github.com".to_owned()
}

fn default_secret_env() -> String {
    "GITHUB_WEBHOOK_SECRET".to_owned()
}

/// Reads, parses and validates the file.
pub fn load(path: &Path) -> Result<(WatchConfig, Vec<Watch>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|err| match err {
        ParseError::Yaml(source) => ConfigError::Parse {
            path: path.to_owned(),
            source,
        },
        ParseError::Invalid(message) => ConfigError::Invalid {
            path: path.to_owned(),
            message,
        },
    })
}

#[derive(Debug)]
enum ParseError {
    Yaml(serde_norway::Error),
    Invalid(String),
}

fn parse(text: &str) -> Result<(WatchConfig, Vec<Watch>), ParseError> {
    let config: WatchConfig = serde_norway::from_str(text).map_err(ParseError::Yaml)?;
    let mut watches = Vec::new();
    for (index, spec) in config.watches.iter().enumerate() {
        let watch = validate(index, spec).map_err(ParseError::Invalid)?;
        if watches.iter().any(|w: &Watch| w.name == watch.name) {
            return Err(ParseError::Invalid(format!(
                "two watches are named {:?}; give one of them a distinct `name:`",
                watch.name
            )));
        }
        watches.push(watch);
    }
    if watches.is_empty() {
        return Err(ParseError::Invalid(
            "no watches configured; add a `github:` or `manifest:` entry under `watches:`".into(),
        ));
    }
    if let Some(cmd) = &config.apply_command {
        if cmd.is_empty() {
            return Err(ParseError::Invalid(
                "apply_command is empty; remove it to use `cutover apply`".into(),
            ));
        }
    }
    Ok((config, watches))
}

fn validate(index: usize, spec: &WatchSpec) -> Result<Watch, String> {
    let at = format!("watches[{index}]");
    let (source, default_name) = match (&spec.github, &spec.manifest) {
        (Some(g), None) => {
            check_github(&at, g)?;
            (Source::Github(g.clone()), g.repo.replace('/', "-"))
        }
        (None, Some(m)) => {
            if !(m.url.starts_with("s3://")
                || m.url.starts_with("http://")
                || m.url.starts_with("https://"))
            {
                return Err(format!(
                    "{at}: manifest url {:?} is not s3://, http:// or https://",
                    m.url
                ));
            }
            (Source::Manifest(m.clone()), sanitize(&m.url))
        }
        _ => {
            return Err(format!(
                "{at}: give exactly one of `github:` or `manifest:`"
            ))
        }
    };
    let name = spec.name.clone().unwrap_or(default_name);
    if !crate::protocol::layout::valid_version(&name) {
        return Err(format!(
            "{at}: name {name:?} must be letters, digits, '.', '_', '-' or '+' (it names a file)"
        ));
    }
    let template = match (&source, &spec.template) {
        (Source::Github(_), Some(t)) => {
            check_template(&at, t)?;
            Some(t.clone())
        }
        (Source::Github(_), None) => {
            return Err(format!(
                "{at}: a github watch needs a `template:` (dest, commands, app) to render releases into"
            ))
        }
        (Source::Manifest(_), Some(_)) => {
            return Err(format!(
                "{at}: a manifest watch deploys the manifest as is; remove its `template:`"
            ))
        }
        (Source::Manifest(_), None) => None,
    };
    Ok(Watch {
        name,
        source,
        template,
    })
}

fn check_github(at: &str, g: &GithubSpec) -> Result<(), String> {
    let parts: Vec<&str> = g.repo.split('/').collect();
    if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!("{at}: repo {:?} is not OWNER/REPO", g.repo));
    }
    for glob in std::iter::once(&g.asset).chain(g.checksums_asset.as_ref()) {
        globset::Glob::new(glob).map_err(|e| format!("{at}: asset glob {glob:?}: {e}"))?;
    }
    for v in &g.ignore {
        if parse_version(v).is_none() {
            return Err(format!("{at}: ignore entry {v:?} is not a semver version"));
        }
    }
    Ok(())
}

fn check_template(at: &str, t: &Mapping) -> Result<(), String> {
    for key in ["src", "checksum"] {
        if t.contains_key(key) {
            return Err(format!(
                "{at}: template sets `{key}`, which the watcher fills in from the release; remove it"
            ));
        }
    }
    if !t.contains_key("dest") {
        return Err(format!("{at}: template needs a `dest:`"));
    }
    if let Some(app) = t.get("app") {
        let Value::Mapping(app) = app else {
            return Err(format!("{at}: template `app:` must be a mapping"));
        };
        if app.contains_key("version") {
            return Err(format!(
                "{at}: template sets `app.version`, which the watcher fills in; remove it"
            ));
        }
    }
    // Render it as a release would and read it as the agent will, so a typo in the template
    // stops the watcher now rather than failing (and blacklisting) the next release.
    let sample = crate::watch::deploy::render(
        t,
        "https://example.invalid/a.tar.gz",
        &"0".repeat(64),
        "0.0.0",
    );
    let text = serde_norway::to_string(&sample)
        .map_err(|e| format!("{at}: template cannot be written as YAML: {e}"))?;
    let lookup = |name: &str| std::env::var(name).ok();
    let parsed = crate::agent::manifest::parse(&text, &lookup)
        .map_err(|e| format!("{at}: template does not make a valid manifest: {e}"))?;
    if let Some(warning) = parsed.warnings.first() {
        return Err(format!("{at}: template: {warning}"));
    }
    Ok(())
}

/// A file-name-safe form of a URL: `s3://b/k.yml` → `s3-b-k.yml`.
fn sanitize(url: &str) -> String {
    let body = url.replace("://", "-");
    let mut out: String = body
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(100);
    out.trim_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
watches:
  - github: { repo: acme/shop, asset: "shop-*-linux-amd64.tar.gz", ignore: [v1.2.3] }
    template: { dest: /srv/shop, app: { name: shop, run: ./shop, listen: "0.0.0.0:8080" } }
  - manifest: { url: "s3://bucket/shop.yml", interval: 10s }
webhook: { listen: "127.0.0.1:9090" }
"#;

    #[test]
    fn a_full_config_parses_with_defaults() {
        let (config, watches) = parse(GOOD).unwrap();
        assert_eq!(watches[0].name, "acme-shop");
        assert_eq!(watches[0].interval(), Duration::from_secs(60));
        assert_eq!(watches[0].app_name().as_deref(), Some("shop"));
        assert_eq!(watches[1].name, "s3-bucket-shop.yml");
        assert_eq!(watches[1].interval(), Duration::from_secs(10));
        assert_eq!(config.webhook.unwrap().secret_env, "GITHUB_WEBHOOK_SECRET");
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let cases = [
            (
                "watches: [{github: {repo: acme, asset: x}, template: {dest: /x}}]",
                "not OWNER/REPO",
            ),
            (
                "watches: [{github: {repo: a/b, asset: x}, template: {dest: /x, src: y}}]",
                "template sets `src`",
            ),
            ("watches: [{github: {repo: a/b, asset: x}}]", "needs a `template:`"),
            (
                "watches: [{manifest: {url: ftp://x}}]",
                "is not s3://, http:// or https://",
            ),
            ("watches: [{name: x}]", "exactly one of"),
            (
                "watches: [{github: {repo: a/b, asset: x}, template: {dest: /x, app: {name: s, run: r, listen: ':1', instnaces: 2}}}]",
                "template does not make a valid manifest",
            ),
            ("watches: []", "no watches configured"),
            (
                "watches: [{github: {repo: a/b, asset: x, ignore: [banana]}, template: {dest: /x}}]",
                "not a semver version",
            ),
        ];
        for (text, expected) in cases {
            match parse(text) {
                Err(ParseError::Invalid(message)) => {
                    assert!(message.contains(expected), "{text}: {message}")
                }
                other => panic!("{text}: expected an error with {expected:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_keys_are_an_error() {
        let text = "watches: [{manifest: {url: 'https://x/m.yml', intervall: 5s}}]";
        assert!(matches!(parse(text), Err(ParseError::Yaml(_))));
    }
}
