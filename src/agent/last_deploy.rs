//! The agent's last deploy of each app and `dest`, as a node_exporter textfile-collector file
//! (`--metrics-textfile`, by default `STATE/metrics/agent.prom`): when it ended, whether it
//! succeeded and how long it took, so that Prometheus can alert on a host whose deploys fail or
//! stopped coming.
//!
//! Each run is one short process, so the deploys already seen are kept in
//! `STATE/metrics/last-deploys.json` (under a lock: agents for other `dest`s run at the same
//! time) and the whole file is written again, atomically: node_exporter never reads half of it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// One finished deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastDeploy {
    /// The manifest's `app:` name, empty for a plain manifest.
    pub app: String,
    /// Where the files went, empty for a commands-only manifest.
    pub dest: String,
    /// When it ended, in seconds since the Unix epoch.
    pub finished: f64,
    pub succeeded: bool,
    pub duration_seconds: f64,
}

impl LastDeploy {
    pub fn new(app: &str, dest: &str, succeeded: bool, took: Duration) -> LastDeploy {
        let finished = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        LastDeploy {
            app: app.to_owned(),
            dest: dest.to_owned(),
            finished,
            succeeded,
            duration_seconds: took.as_secs_f64(),
        }
    }
}

/// The default textfile: `STATE/metrics/agent.prom`.
pub fn default_textfile(state_dir: &Path) -> PathBuf {
    state_dir.join("metrics").join("agent.prom")
}

/// Keeps `deploy` as the last of its app and `dest`, and writes every one kept to `textfile`.
pub fn record(state_dir: &Path, textfile: &Path, deploy: LastDeploy) -> std::io::Result<()> {
    let dir = state_dir.join("metrics");
    std::fs::create_dir_all(&dir)?;
    let records = dir.join("last-deploys.json");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("last-deploys.lock"))?;
    let _held =
        Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))?;
    // A record file that cannot be read is started afresh: it is only the other dests' last runs.
    let mut kept: BTreeMap<(String, String), LastDeploy> = std::fs::read(&records)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Vec<LastDeploy>>(&bytes).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|d| ((d.app.clone(), d.dest.clone()), d))
        .collect();
    kept.insert((deploy.app.clone(), deploy.dest.clone()), deploy);
    let all: Vec<LastDeploy> = kept.into_values().collect();
    let json = serde_json::to_vec_pretty(&all).map_err(std::io::Error::other)?;
    write_atomically(&records, &json)?;
    if let Some(parent) = textfile.parent() {
        std::fs::create_dir_all(parent)?;
    }
    write_atomically(textfile, render(&all).as_bytes())
}

/// A gauge's name, help and value.
type Gauge = (&'static str, &'static str, fn(&LastDeploy) -> f64);

/// The textfile: three gauges per app and `dest`.
pub fn render(deploys: &[LastDeploy]) -> String {
    let families: [Gauge; 3] = [
        (
            "cutover_agent_last_deploy_timestamp_seconds",
            "When the agent's last deploy of this app and dest ended, in seconds since the Unix epoch.",
            |d| d.finished,
        ),
        (
            "cutover_agent_last_deploy_success",
            "1 if the agent's last deploy of this app and dest succeeded, else 0.",
            |d| f64::from(u8::from(d.succeeded)),
        ),
        (
            "cutover_agent_last_deploy_duration_seconds",
            "How long the agent's last deploy of this app and dest took, in seconds.",
            |d| d.duration_seconds,
        ),
    ];
    let mut text = String::new();
    for (name, help, value) in families {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for deploy in deploys {
            text.push_str(&format!(
                "{name}{{app=\"{}\",dest=\"{}\"}} {}\n",
                escape(&deploy.app),
                escape(&deploy.dest),
                value(deploy)
            ));
        }
    }
    text
}

/// A label value as the text format writes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Temp file in the same directory, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // node_exporter reads only *.prom files: the temp file's name is never one.
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_app_and_dest_keeps_its_last_deploy() {
        let state = tempfile::tempdir().expect("temp dir");
        let textfile = default_textfile(state.path());
        let took = Duration::from_millis(1500);
        record(
            state.path(),
            &textfile,
            LastDeploy::new("shop", "/srv/shop", false, took),
        )
        .unwrap();
        record(
            state.path(),
            &textfile,
            LastDeploy::new("", "/srv/site", true, took),
        )
        .unwrap();
        record(
            state.path(),
            &textfile,
            LastDeploy::new("shop", "/srv/shop", true, took),
        )
        .unwrap();
        let text = std::fs::read_to_string(&textfile).unwrap();
        assert!(
            text.contains("cutover_agent_last_deploy_success{app=\"shop\",dest=\"/srv/shop\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("cutover_agent_last_deploy_success{app=\"\",dest=\"/srv/site\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "cutover_agent_last_deploy_duration_seconds{app=\"shop\",dest=\"/srv/shop\"} 1.5\n"
            ),
            "{text}"
        );
        assert_eq!(
            text.matches("cutover_agent_last_deploy_timestamp_seconds{")
                .count(),
            2,
            "{text}"
        );
    }
}
