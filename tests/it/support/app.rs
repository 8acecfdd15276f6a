//! One app under test, run by a supervisor: the bundled demo app (`cutover demo-app`) in a temp
//! home, deployed either from an `AppSpec` over the control socket (its release dirs placed by
//! hand) or from a manifest and an archive through the real agent, and reached through its
//! public address. Every process still working under its home is killed on drop, whichever
//! supervisor started it (instances outlive a killed supervisor by design).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover::protocol::app::Strategy;
use cutover::protocol::AppSpec;
use sha2::{Digest, Sha256};

use super::procs::Reaper;
use super::request::{Answer, Request};
use super::supervisor::{Supervisor, ROLLOUT};
use super::{cutover_bin, free_port, wait_until};

pub struct App {
    pub name: String,
    /// `home/NAME`: its releases, `current` and `shared`.
    pub dest: PathBuf,
    pub listen: SocketAddr,
    /// Demo-app flags per version (`--fail-boot`, `--boot-delay 3000`, …); versions not listed
    /// run plainly.
    pub faults: Vec<(String, String)>,
    /// Changes to the spec a deploy over the control socket sends.
    pub tweak: fn(&mut AppSpec),
    /// The `Host` its requests name (one of its `hosts` when it shares an address);
    /// `shop.example` unless set.
    pub host: Option<String>,
    /// Declared before `home`: the processes go before their directory does.
    _reaper: Reaper,
    home: tempfile::TempDir,
}

impl App {
    /// An app named `name` in a temp home of its own, on a free port of 127.0.0.1.
    pub fn new(name: &str) -> App {
        let home = tempfile::tempdir().expect("temp dir for the app");
        let dest = home.path().join(name);
        App {
            name: name.to_owned(),
            _reaper: Reaper(vec![dest.clone()]),
            dest,
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            faults: Vec::new(),
            tweak: |_| {},
            host: None,
            home,
        }
    }

    /// The temp dir the app lives in; its supervisor's too, when [`App::serving`] started it.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The demo-app flags of `version`, each after a space.
    fn flags(&self, version: &str) -> String {
        self.faults
            .iter()
            .filter(|(v, _)| v == version)
            .map(|(_, f)| format!(" {f}"))
            .collect()
    }

    /// Places an (empty) release dir, as the agent would.
    pub fn place(&self, version: &str) {
        std::fs::create_dir_all(self.dest.join("releases").join(version))
            .expect("make release dir");
    }

    /// The spec a manifest would carry: fast health checks, short drains and stops.
    pub fn spec(&self, version: &str) -> AppSpec {
        let mut spec: AppSpec = serde_json::from_value(serde_json::json!({
            "name": self.name,
            "version": version,
            "run": format!(
                "{} demo-app --port {{port}} --version-label {version}{}",
                cutover_bin().display(),
                self.flags(version)
            ),
            "listen": self.listen.to_string(),
            "instances": 1,
            "health": {
                "path": "/healthz", "interval": "100ms", "timeout": "2s",
                "healthy": 2, "unhealthy": 2, "deadline": "60s"
            },
            "drain_timeout": "5s",
            "stop_timeout": "5s",
            "keep_releases": 5,
        }))
        .expect("a valid app spec");
        (self.tweak)(&mut spec);
        spec
    }

    /// Writes the release `NAME-VERSION.tar.gz` (see [`demo_archive`]) and the manifest
    /// `NAME-VERSION.yml` that deploys it here with the agent, into the app's home; `lines` are
    /// added to its `app:` section (`shared: [ log ]`). Returns the manifest's path.
    pub fn write_manifest(&self, version: &str, lines: &[&str]) -> PathBuf {
        let stem = format!("{}-{version}", self.name);
        let archive = self.home().join(format!("{stem}.tar.gz"));
        let bytes = demo_archive(version);
        std::fs::write(&archive, &bytes).expect("write the release archive");
        let mut manifest = format!(
            "src: file://{archive}\nchecksum: {checksum}\ndest: {dest}\napp:\n  name: {name}\n  \
             version: \"{version}\"\n  run: \"{bin} demo-app --port {{port}}{flags}\"\n  \
             listen: {listen}\n  instances: 1\n  env: {{ DEMO_VERSION: \"{version}\" }}\n  \
             health: {{ path: /healthz, interval: 100ms, timeout: 1s, healthy: 2, deadline: 20s }}\n  \
             drain_timeout: 2s\n  stop_timeout: 5s\n",
            archive = archive.display(),
            checksum = hex::encode(Sha256::digest(&bytes)),
            dest = self.dest.display(),
            name = self.name,
            bin = cutover_bin().display(),
            flags = self.flags(version),
            listen = self.listen,
        );
        for line in lines {
            manifest.push_str(&format!("  {line}\n"));
        }
        let path = self.home().join(format!("{stem}.yml"));
        std::fs::write(&path, manifest).expect("write the manifest");
        path
    }

    /// One GET through the app's public address; an error unless it is answered 200.
    pub fn get(&self) -> Result<Answer, String> {
        let mut request = Request::get("/");
        if let Some(host) = &self.host {
            request = request.header("host", host);
        }
        let answer = request.send(self.listen)?;
        match answer.status {
            200 => Ok(answer),
            _ => Err(format!("{answer:?}")),
        }
    }

    /// Whether a GET through the public address is answered by `version`.
    pub fn serves(&self, version: &str) -> bool {
        self.get()
            .is_ok_and(|answer| answer.version() == Some(version))
    }

    /// Waits until a GET through the public address is answered by `version`.
    pub fn wait_serving(&self, version: &str) {
        wait_until(
            &format!("{} to serve {version}", self.name),
            ROLLOUT,
            || self.serves(version),
        );
    }

    /// The usual start of a test: a supervisor in the app's home, every one of `versions`
    /// placed, and the first deployed and serving.
    pub fn serving(&self, versions: &[&str]) -> Supervisor {
        let supervisor = Supervisor::start_in(self.home());
        for version in versions {
            self.place(version);
        }
        supervisor.deploy_ok(self, versions[0]);
        self.wait_serving(versions[0]);
        supervisor
    }
}

/// Makes `spec` a canary of `steps` (`"10%"`, …), each running for `pause` and judged once the
/// new version answered `min_requests` in it (30 s without a verdict abort it).
pub fn canary(spec: &mut AppSpec, steps: &[&str], pause: Duration, min_requests: u64) {
    spec.strategy = Strategy::Canary;
    spec.canary.steps = steps.iter().map(|s| s.parse().expect("a share")).collect();
    spec.canary.pause = pause;
    spec.canary.min_requests = min_requests;
    spec.canary.progress_deadline = Duration::from_secs(30);
}

/// A small tar.gz standing in for a release: a `VERSION` file and a `log/` dir (the app itself
/// is the cutover binary).
pub fn demo_archive(version: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    tar.append_data(&mut header, "log/", std::io::empty())
        .expect("tar a dir");
    let body = format!("{version}\n");
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(body.len() as u64);
    tar.append_data(&mut header, "VERSION", body.as_bytes())
        .expect("tar a file");
    let gz = tar.into_inner().expect("finish the tar");
    gz.finish().expect("finish the gzip")
}
