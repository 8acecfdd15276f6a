//! `cutover watch` against a fake GitHub on 127.0.0.1 (`support::github`): the harness shared by
//! the tests of each area, and the configuration checks.
//!
//! Most tests deploy through a recording `apply_command` (a shell script that logs each
//! manifest it is handed), so they observe exactly what the watcher decided; `e2e` runs the real
//! `cutover apply` against a real supervisor.

mod e2e;
mod json_log;
mod manifest;
mod releases;
mod signed;
mod webhook;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::support::cutover;
use crate::support::github::{AssetSpec, FakeGithub};

pub const DEADLINE: Duration = Duration::from_secs(30);
const ASSET: &str = "shop-*-linux-amd64.tar.gz";

pub fn asset(version: &str) -> AssetSpec {
    AssetSpec::new(
        &format!("shop-{version}-linux-amd64.tar.gz"),
        format!("archive of {version}").as_bytes(),
    )
}

/// A temp dir with a state dir, a config file and a recording deployer.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub gh: FakeGithub,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = format!(
            r#"m="$1"
echo "$m" >> "{d}/deploys.log"
if [ -f "{d}/fail" ] && grep -qF "$(cat "{d}/fail")" "$m"; then echo "rollout failed: unhealthy" >&2; exit 1; fi
echo "Deploy manifest succeeded"
"#,
            d = dir.path().display()
        );
        std::fs::write(dir.path().join("record.sh"), script).expect("write record.sh");
        Setup {
            dir,
            gh: FakeGithub::start(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// Writes watch.yml: one GitHub watch of octo/shop with `extra` lines under `github:`, and
    /// `tail` appended at the top level.
    pub fn github_config(&self, interval: &str, extra: &str, tail: &str) -> PathBuf {
        let text = format!(
            r#"apply_command: [sh, "{record}"]
watches:
  - name: shop
    github:
      repo: octo/shop
      asset: "{ASSET}"
      interval: {interval}
      api_url: "{api}"
{extra}
    template:
      dest: "{dest}"
      commands:
        post: ["echo placed"]
{tail}
"#,
            record = self.path("record.sh").display(),
            api = self.gh.api_url(),
            dest = self.path("dest").display(),
        );
        let path = self.path("watch.yml");
        std::fs::write(&path, text).expect("write watch.yml");
        path
    }

    /// Writes watch.yml: one watch of the manifest at `url`, polled every 100 ms.
    pub fn manifest_config(&self, url: &str) -> PathBuf {
        let text = format!(
            "apply_command: [sh, \"{}\"]\nwatches:\n  - name: shop\n    manifest: {{ url: \"{url}\", interval: 100ms }}\n",
            self.path("record.sh").display(),
        );
        let path = self.path("watch.yml");
        std::fs::write(&path, text).expect("write watch.yml");
        path
    }

    pub fn spawn(&self, config: &Path, env: &[(&str, &str)]) -> Watcher {
        self.spawn_with_args(config, env, &[])
    }

    /// `cutover watch --state-dir … --config CONFIG`, anonymous to GitHub (no token in the
    /// environment, no `gh` on the path), so that runs are predictable.
    pub fn watch(&self, config: &Path) -> Command {
        let mut cmd = cutover();
        cmd.arg("watch")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--config")
            .arg(config)
            .env_remove("GH_TOKEN")
            .env_remove("GITHUB_TOKEN")
            .env("PATH", "/usr/bin:/bin");
        cmd
    }

    /// `cutover watch --state-dir … ARGS` (for the verbs that read no config).
    pub fn watch_state(&self, args: &[&str]) -> Output {
        cutover()
            .arg("watch")
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .output()
            .expect("run cutover watch")
    }

    /// [`Setup::spawn`] with `args` added to `cutover watch`'s (`--log-format json`).
    pub fn spawn_with_args(&self, config: &Path, env: &[(&str, &str)], args: &[&str]) -> Watcher {
        let log = std::fs::File::create(self.path("watch.log")).expect("watch.log");
        let mut cmd = self.watch(config);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Watcher {
            child: cmd.spawn().expect("spawn cutover watch"),
        }
    }

    /// Runs `cutover watch --once`, returning (success, stdout).
    pub fn once(&self, config: &Path) -> (bool, String) {
        let out = self
            .watch(config)
            .arg("--once")
            .output()
            .expect("run cutover watch --once");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    pub fn status(&self) -> String {
        let out = self.watch_state(&["--status"]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Versions handed to the deployer, in order (from the manifest file names).
    pub fn deploys(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("deploys.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let name = Path::new(l)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                name.trim_start_matches("manifest-")
                    .trim_end_matches(".yml")
                    .to_owned()
            })
            .collect()
    }

    pub fn manifest(&self, version: &str) -> String {
        let path = self
            .state_dir()
            .join(format!("watch/shop/manifest-{version}.yml"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }
}

/// The running watcher, killed on drop.
pub struct Watcher {
    child: Child,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Watcher {
    /// Sends SIGTERM, as systemd does to stop a service.
    pub fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM the watcher");
    }

    /// Waits for the exit, panicking after `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let mut status = None;
        crate::support::wait_until("the watcher to exit", deadline, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        status.expect("exited")
    }
}

#[test]
fn a_stop_lets_the_deploy_in_flight_finish() {
    let s = Setup::new();
    s.gh.publish("v1.0.0", false, vec![asset("1.0.0")]);
    // A deploy that runs until the test says "go": it is in flight when SIGTERM arrives.
    let d = s.dir.path().display().to_string();
    let slow = format!(
        "touch {d}/started; while [ ! -f {d}/go ]; do sleep 0.05; done; touch {d}/finished"
    );
    let config = s.github_config("1h", "", "");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        &format!("apply_command: [sh, \"{}\"]", s.path("record.sh").display()),
        &format!("apply_command: [sh, -c, '{slow}']"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let mut w = s.spawn(&config, &[]);
    crate::support::wait_until("the deploy to start", DEADLINE, || {
        s.path("started").exists()
    });
    w.sigterm();
    // Still running: it waits for the deploy rather than killing it.
    std::fs::write(s.path("go"), "").unwrap();
    let status = w.wait_exit(DEADLINE);
    assert!(status.success(), "{status}");
    assert!(s.path("finished").exists(), "the deploy was cut short");
}

#[test]
fn a_bad_config_is_refused_before_anything_runs() {
    let s = Setup::new();
    let config = s.path("watch.yml");
    std::fs::write(
        &config,
        "watches: [{github: {repo: octo, asset: x}, template: {dest: /x}}]",
    )
    .unwrap();
    let out = s.watch(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("repo \"octo\" is not OWNER/REPO"), "{err}");
}

#[test]
fn the_example_config_loads_and_its_template_makes_a_valid_manifest() {
    let path = crate::support::fixture("../manifests/watch.yml");
    let (config, watches) = cutover::watch::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = watches.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["shop", "docs"]);
    assert_eq!(watches[0].app_name().as_deref(), Some("shop"));
    assert!(config.webhook.is_some());
}
