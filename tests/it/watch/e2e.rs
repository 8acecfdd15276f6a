//! `cutover watch` fully real: a fake GitHub on 127.0.0.1, the real `cutover apply` as the
//! deployer and a real supervisor running the demo app; a release rolled back in the supervisor
//! is never picked again.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::app::demo_archive;
use crate::support::github::{AssetSpec, FakeGithub};
use crate::support::supervisor::Supervisor;
use crate::support::{cutover, cutover_bin, free_port, wait_until};

const DEADLINE: Duration = Duration::from_secs(90);

/// The demo app's release archive for `version`, as a release asset.
fn demo_asset(version: &str) -> AssetSpec {
    AssetSpec::new(
        &format!("shop-{version}-linux-amd64.tar.gz"),
        &demo_archive(version),
    )
}

fn config(dir: &Path, gh: &FakeGithub, port: u16, apply_command: &str) -> std::path::PathBuf {
    let text = format!(
        r#"{apply_command}
watches:
  - name: shop
    github: {{ repo: octo/shop, asset: "shop-*-linux-amd64.tar.gz", interval: 200ms, api_url: "{api}" }}
    template:
      dest: "{dest}"
      app:
        name: shop
        run: "{bin} demo-app --port {{port}}"
        listen: "127.0.0.1:{port}"
        health: {{ path: /healthz, interval: 100ms, timeout: 1s, healthy: 2, deadline: 20s }}
        drain_timeout: 1s
        stop_timeout: 5s
"#,
        api = gh.api_url(),
        dest = dir.join("dest").display(),
        bin = cutover_bin().display(),
    );
    let path = dir.join(format!("watch-{}.yml", apply_command.len()));
    std::fs::write(&path, text).unwrap();
    path
}

/// The running watcher, killed on drop; its log is printed when the test failed.
struct Watcher(Child, std::path::PathBuf);

impl Drop for Watcher {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            eprintln!("---- watch log:\n{log}");
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn releases_roll_out_through_the_supervisor_and_a_rolled_back_one_is_skipped() {
    let sup = Supervisor::start();
    let gh = FakeGithub::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    gh.publish("v1.0.0", false, vec![demo_asset("1.0.0")]);

    let watch_log = std::fs::File::create(dir.path().join("watch.log")).unwrap();
    let watcher = Watcher(
        cutover()
            .arg("watch")
            .arg("--state-dir")
            .arg(&sup.state_dir)
            .arg("--socket")
            .arg(&sup.socket)
            .arg("--config")
            .arg(config(dir.path(), &gh, port, ""))
            .env("PATH", "/usr/bin:/bin")
            .env_remove("GH_TOKEN")
            .env_remove("GITHUB_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(watch_log)
            .spawn()
            .expect("spawn cutover watch"),
        dir.path().join("watch.log"),
    );
    let watch_log = || std::fs::read_to_string(dir.path().join("watch.log")).unwrap_or_default();

    wait_until("1.0.0 live", DEADLINE, || {
        sup.live_version("shop").as_deref() == Some("1.0.0")
    });
    assert_eq!(
        gh.asset_downloads(),
        1,
        "the agent downloads the asset once"
    );
    gh.publish("v1.1.0", false, vec![demo_asset("1.1.0")]);
    wait_until("1.1.0 live", DEADLINE, || {
        sup.live_version("shop").as_deref() == Some("1.1.0")
    });
    let n = gh.release_lists().len();
    wait_until("two more polls", DEADLINE, || {
        gh.release_lists().len() >= n + 2
    });
    assert_eq!(
        gh.asset_downloads(),
        2,
        "each release downloaded once: {}",
        watch_log()
    );
    drop(watcher);

    let out = sup.run(&["rollback", "shop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sup.live_version("shop").as_deref(), Some("1.0.0"));

    // A watcher starting afresh (new state) asks the supervisor and passes over 1.1.0.
    let record = dir.path().join("deploys.log");
    let apply = format!(
        "apply_command: [sh, -c, 'echo \"$0\" >> {}']",
        record.display()
    );
    let fresh_state = dir.path().join("fresh-state");
    let out = cutover()
        .arg("watch")
        .arg("--state-dir")
        .arg(&fresh_state)
        .arg("--socket")
        .arg(&sup.socket)
        .arg("--once")
        .arg("--config")
        .arg(config(dir.path(), &gh, port, &apply))
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("skipped 1.1.0: marked bad by the supervisor"),
        "{report}"
    );
    let deployed = std::fs::read_to_string(&record).unwrap_or_default();
    assert!(deployed.contains("manifest-1.0.0.yml"), "{deployed}");
    assert!(!deployed.contains("1.1.0"), "{deployed}");
}
