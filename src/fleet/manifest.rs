//! Just enough of a manifest for a coordinator: which app it deploys and which version.
//!
//! The coordinator may run on an operator's laptop that never deploys anything, so it does not
//! go through the agent's pipeline: it reads the manifest once (`file://`, a path, `http(s)://`)
//! and takes `app.name` and `app.version`, or the first 12 hex digits of `checksum` as the agent
//! does when the version is left out. `--app`/`--version` skip the read for other schemes.

use std::time::Duration;

use serde::Deserialize;

const FETCH_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("could not read manifest {url}: {reason}")]
    Read { url: String, reason: String },
    #[error("manifest {url} is not valid YAML: {source}")]
    Yaml {
        url: String,
        source: serde_norway::Error,
    },
    #[error("manifest {url} has no `app:` section: a fleet rollout needs an app to health-gate; use `serf event deploy URL` for a plain file drop")]
    NoApp { url: String },
    #[error("manifest {url} has neither `app.version` nor `checksum`: add one, or pass --version")]
    NoVersion { url: String },
    #[error(
        "manifest URL scheme of {url} is not readable by the coordinator: pass --app and --version"
    )]
    Scheme { url: String },
}

/// The app a manifest deploys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub app: String,
    pub version: String,
}

#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    checksum: Option<String>,
    #[serde(default)]
    app: Option<AppPart>,
}

#[derive(Deserialize)]
struct AppPart {
    name: String,
    #[serde(default)]
    version: Option<serde_norway::Value>,
}

/// Reads the manifest at `url` and returns its app and version.
pub async fn read(url: &str) -> Result<Release, ManifestError> {
    let text = fetch(url).await?;
    parse(url, &text)
}

/// The app and version of a manifest's text (`url` only names it in errors).
pub fn parse(url: &str, text: &str) -> Result<Release, ManifestError> {
    let doc: Doc = serde_norway::from_str(text).map_err(|source| ManifestError::Yaml {
        url: url.to_owned(),
        source,
    })?;
    let app = doc.app.ok_or_else(|| ManifestError::NoApp {
        url: url.to_owned(),
    })?;
    // `version: 2` or `version: 1.5` are YAML numbers; the agent treats them as their text.
    let version = match app.version {
        Some(serde_norway::Value::String(s)) => Some(s),
        Some(serde_norway::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let version = version
        .or_else(|| {
            doc.checksum
                .filter(|c| c.len() >= 12)
                .map(|c| c[..12].to_ascii_lowercase())
        })
        .ok_or_else(|| ManifestError::NoVersion {
            url: url.to_owned(),
        })?;
    Ok(Release {
        app: app.name,
        version,
    })
}

async fn fetch(url: &str) -> Result<String, ManifestError> {
    let read_err = |reason: String| ManifestError::Read {
        url: url.to_owned(),
        reason,
    };
    if url.starts_with("http://") || url.starts_with("https://") {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| read_err(e.to_string()))?;
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| read_err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(read_err(format!("HTTP {}", resp.status())));
        }
        return resp.text().await.map_err(|e| read_err(e.to_string()));
    }
    let path = match url.strip_prefix("file://") {
        Some(path) => path,
        None if url.contains("://") => {
            return Err(ManifestError::Scheme {
                url: url.to_owned(),
            })
        }
        None => url,
    };
    tokio::fs::read_to_string(path)
        .await
        .map_err(|e| read_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_name_and_version_are_read() {
        let r = parse(
            "m",
            "src: x\napp:\n  name: shop\n  version: 1.4.2\n  run: x\n",
        )
        .unwrap();
        assert_eq!((r.app.as_str(), r.version.as_str()), ("shop", "1.4.2"));
    }

    #[test]
    fn numeric_versions_keep_their_text() {
        let r = parse("m", "app:\n  name: shop\n  version: 2\n").unwrap();
        assert_eq!(r.version, "2");
    }

    #[test]
    fn version_defaults_to_the_checksum_prefix() {
        let r = parse("m", "checksum: ABCDEF0123456789ff\napp:\n  name: shop\n").unwrap();
        assert_eq!(r.version, "abcdef012345");
    }

    #[test]
    fn a_plain_file_drop_is_refused() {
        let err = parse("m", "src: x\ndest: /srv\n").unwrap_err();
        assert!(err.to_string().contains("no `app:` section"), "{err}");
    }
}
