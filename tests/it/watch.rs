//! `cutover watch` against a fake GitHub on 127.0.0.1: releases deployed once, 304s that cost
//! nothing, rate-limit pauses, skipped and refused versions, webhooks, watched manifest URLs.
//!
//! Most tests deploy through a recording `apply_command` (a shell script that logs each
//! manifest it is handed), so they observe exactly what the watcher decided; `real_apply_*`
//! runs the real `cutover apply` end to end.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::support::github::{AssetSpec, FakeGithub};
use crate::support::{cutover, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);
const ASSET: &str = "shop-*-linux-amd64.tar.gz";

fn asset(version: &str) -> AssetSpec {
    AssetSpec::new(
        &format!("shop-{version}-linux-amd64.tar.gz"),
        format!("archive of {version}").as_bytes(),
    )
}

/// A temp dir with a state dir, a config file and a recording deployer.
struct Setup {
    dir: tempfile::TempDir,
    gh: FakeGithub,
}

impl Setup {
    fn new() -> Setup {
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

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// Writes watch.yml: one GitHub watch of octo/shop with `extra` lines under `github:`, and
    /// `tail` appended at the top level.
    fn github_config(&self, interval: &str, extra: &str, tail: &str) -> PathBuf {
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

    fn spawn(&self, config: &Path, env: &[(&str, &str)]) -> Watcher {
        let log = std::fs::File::create(self.path("watch.log")).expect("watch.log");
        let mut cmd = cutover();
        cmd.arg("watch")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--config")
            .arg(config)
            .env_remove("GH_TOKEN")
            .env_remove("GITHUB_TOKEN")
            .env("PATH", "/usr/bin:/bin") // no `gh` on the path: anonymous, predictable
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
    fn once(&self, config: &Path) -> (bool, String) {
        let out = cutover()
            .arg("watch")
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--once", "--config"])
            .arg(config)
            .env_remove("GH_TOKEN")
            .env_remove("GITHUB_TOKEN")
            .env("PATH", "/usr/bin:/bin")
            .output()
            .expect("run cutover watch --once");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn status(&self) -> String {
        let out = cutover()
            .arg("watch")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--status")
            .output()
            .expect("run cutover watch --status");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Versions handed to the deployer, in order (from the manifest file names).
    fn deploys(&self) -> Vec<String> {
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

    fn manifest(&self, version: &str) -> String {
        let path = self
            .state_dir()
            .join(format!("watch/shop/manifest-{version}.yml"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }
}

/// The running watcher, killed on drop.
struct Watcher {
    child: Child,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_new_release_is_deployed_once_and_idle_polls_are_304s() {
    let s = Setup::new();
    let v1 = asset("1.0.0");
    s.gh.publish(
        "v1.0.0",
        false,
        vec![
            v1.clone(),
            AssetSpec::new("shop-1.0.0-darwin-arm64.tar.gz", b"other"),
        ],
    );
    let _w = s.spawn(&s.github_config("100ms", "", ""), &[]);

    wait_until("1.0.0 deployed", DEADLINE, || s.deploys() == ["1.0.0"]);
    let manifest = s.manifest("1.0.0");
    assert!(
        manifest.contains(&format!("checksum: {}", v1.sha256())),
        "{manifest}"
    );
    assert!(manifest.contains("/octo/shop/releases/download/v1.0.0/shop-1.0.0-linux-amd64.tar.gz"));
    assert!(
        manifest.contains("post:"),
        "the template's hooks are kept: {manifest}"
    );

    // Several more polls: each carries the ETag and costs a 304, nothing is deployed again.
    wait_until("four more polls", DEADLINE, || {
        s.gh.release_lists().len() >= 5
    });
    let lists = s.gh.release_lists();
    assert_eq!(lists[0].status, 200);
    assert_eq!(lists[0].if_none_match, None);
    for later in &lists[1..5] {
        assert_eq!(later.status, 304, "{later:?}");
        assert!(later.if_none_match.is_some(), "{later:?}");
    }
    assert_eq!(s.deploys(), ["1.0.0"]);
    assert_eq!(s.gh.asset_downloads(), 0, "a 304 downloads nothing");

    // A newer release is picked up, once.
    s.gh.publish("v1.1.0", false, vec![asset("1.1.0")]);
    wait_until("1.1.0 deployed", DEADLINE, || s.deploys().len() == 2);
    let n = s.gh.release_lists().len();
    wait_until("two more polls", DEADLINE, || {
        s.gh.release_lists().len() >= n + 2
    });
    assert_eq!(s.deploys(), ["1.0.0", "1.1.0"]);
    let status = s.status();
    assert!(status.contains("deployed:    1.1.0"), "{status}");
    assert!(status.contains("last deploy: 1.1.0 ok"), "{status}");
}

#[test]
fn a_spent_rate_limit_pauses_polling_until_the_reset() {
    let s = Setup::new();
    s.gh.publish("v1.0.0", false, vec![asset("1.0.0")]);
    let reset = SystemTime::now() + Duration::from_secs(3);
    s.gh.rate_limit_until(reset);
    let _w = s.spawn(&s.github_config("100ms", "", ""), &[]);

    wait_until("1.0.0 deployed after the reset", DEADLINE, || {
        s.deploys() == ["1.0.0"]
    });
    let lists = s.gh.release_lists();
    let refused: Vec<_> = lists.iter().filter(|l| l.status == 403).collect();
    assert_eq!(
        refused.len(),
        1,
        "one 403, then silence until the reset: {lists:#?}"
    );
    // x-ratelimit-reset has one-second resolution, so "after the reset" means its whole second.
    let reset_secs = reset
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let next = lists
        .iter()
        .find(|l| l.status == 200)
        .expect("a request after the reset");
    assert!(
        next.at >= SystemTime::UNIX_EPOCH + Duration::from_secs(reset_secs),
        "asked again before the reset"
    );
}

#[test]
fn a_failed_version_is_never_retried_and_the_next_one_deploys() {
    let s = Setup::new();
    std::fs::write(s.path("fail"), "v1.1.0/").unwrap();
    s.gh.publish("v1.0.0", false, vec![asset("1.0.0")]);
    s.gh.publish("v1.1.0", false, vec![asset("1.1.0")]);
    let config = s.github_config("100ms", "", "");
    let _w = s.spawn(&config, &[]);

    wait_until("1.1.0 tried", DEADLINE, || s.deploys() == ["1.1.0"]);
    // After the failure the list is read again and the next older release gets its chance.
    wait_until("1.0.0 deployed", DEADLINE, || {
        s.deploys() == ["1.1.0", "1.0.0"]
    });
    s.gh.publish("v1.2.0", false, vec![asset("1.2.0")]);
    wait_until("1.2.0 deployed", DEADLINE, || s.deploys().len() == 3);
    let n = s.gh.release_lists().len();
    wait_until("two more polls", DEADLINE, || {
        s.gh.release_lists().len() >= n + 2
    });
    assert_eq!(
        s.deploys(),
        ["1.1.0", "1.0.0", "1.2.0"],
        "1.1.0 is never tried again"
    );
    let status = s.status();
    assert!(
        status.contains("never again 1.1.0: failed: apply exited 1: rollout failed: unhealthy"),
        "{status}"
    );
}

#[test]
fn a_missing_checksum_is_refused_with_the_reason_in_status() {
    let s = Setup::new();
    s.gh.publish("v1.0.0", false, vec![asset("1.0.0").without_digest()]);
    let config = s.github_config("1h", "", "");
    let (ok, _) = s.once(&config);
    assert!(ok);
    assert!(s.deploys().is_empty(), "never deployed without a checksum");
    let status = s.status();
    assert!(
        status
            .contains("skipped 1.0.0: refused: asset shop-1.0.0-linux-amd64.tar.gz has no digest"),
        "{status}"
    );

    // A checksums asset fills the gap, fetched through the API like a private repo needs.
    let v2 = asset("2.0.0").without_digest();
    let sums = format!("{}  {}\n", v2.sha256(), v2.name);
    s.gh.publish(
        "v2.0.0",
        false,
        vec![v2.clone(), AssetSpec::new("SHA256SUMS", sums.as_bytes())],
    );
    let config = s.github_config("1h", "      checksums_asset: SHA256SUMS", "");
    let (ok, out) = s.once(&config);
    assert!(ok, "{out}");
    assert_eq!(s.deploys(), ["2.0.0"]);
    assert!(s.manifest("2.0.0").contains(&v2.sha256()));
    let fetched = s.gh.seen_under("/repos/octo/shop/releases/assets/");
    assert_eq!(fetched.len(), 1);
    assert_eq!(
        fetched[0].accept.as_deref(),
        Some("application/octet-stream")
    );
}

#[test]
fn prereleases_and_ignored_versions_are_skipped_unless_asked() {
    let s = Setup::new();
    s.gh.publish("v1.0.0", false, vec![asset("1.0.0")]);
    s.gh.publish("v1.1.0", false, vec![asset("1.1.0")]);
    s.gh.publish("v2.0.0-rc.1", true, vec![asset("2.0.0-rc.1")]);
    let config = s.github_config("1h", "      ignore: [v1.1.0]", "");
    assert!(s.once(&config).0);
    assert_eq!(s.deploys(), ["1.0.0"]);
    let status = s.status();
    assert!(
        status.contains("skipped 2.0.0-rc.1: prerelease"),
        "{status}"
    );
    assert!(
        status.contains("skipped 1.1.0: on the ignore list"),
        "{status}"
    );

    let config = s.github_config("1h", "      prereleases: true", "");
    assert!(s.once(&config).0);
    assert_eq!(s.deploys(), ["1.0.0", "2.0.0-rc.1"]);
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn post_webhook(addr: &str, body: &[u8], signature: &str, delivery: &str) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{addr}/"))
            .header("X-GitHub-Event", "release")
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", signature)
            .header("Content-Type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("post webhook")
            .status()
            .as_u16()
    })
}

#[test]
fn a_signed_webhook_triggers_a_check_and_a_bad_signature_gets_401() {
    let s = Setup::new();
    let port = crate::support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let secret = "It's a Secret to Everybody";
    let config = s.github_config(
        "1h",
        "",
        &format!("webhook: {{ listen: \"{addr}\", secret_env: SHOP_HOOK_SECRET }}"),
    );
    let _w = s.spawn(&config, &[("SHOP_HOOK_SECRET", secret)]);
    wait_until("the first poll", DEADLINE, || {
        s.gh.release_lists().len() == 1
    });

    s.gh.publish("v1.0.0", false, vec![asset("1.0.0")]);
    let event = std::fs::read_to_string(crate::support::fixture("github/release-event.json"))
        .unwrap()
        .replace("Codertocat/Hello-World", "octo/shop");
    let body = event.as_bytes();
    wait_until("the webhook endpoint", DEADLINE, || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    assert_eq!(post_webhook(&addr, body, &sign("wrong", body), "d-1"), 401);
    assert_eq!(post_webhook(&addr, body, "", "d-1"), 401);
    assert_eq!(
        s.gh.release_lists().len(),
        1,
        "a refused webhook triggers nothing"
    );

    assert_eq!(post_webhook(&addr, body, &sign(secret, body), "d-1"), 202);
    wait_until("1.0.0 deployed", DEADLINE, || s.deploys() == ["1.0.0"]);
    wait_until("state saved", DEADLINE, || {
        s.status().contains("deployed:    1.0.0")
    });
    let lists = s.gh.release_lists().len();
    assert_eq!(lists, 2);

    // GitHub's redelivery of the same id is acknowledged and ignored.
    assert_eq!(post_webhook(&addr, body, &sign(secret, body), "d-1"), 200);
    // A new delivery checks again (a 304: still one deploy).
    assert_eq!(post_webhook(&addr, body, &sign(secret, body), "d-2"), 202);
    wait_until("the second webhook's check", DEADLINE, || {
        s.gh.release_lists().len() == 3
    });
    assert_eq!(s.gh.release_lists()[2].status, 304);
    assert_eq!(s.deploys(), ["1.0.0"]);
    let log = std::fs::read_to_string(s.path("watch.log")).unwrap();
    assert!(log.contains("bad or missing X-Hub-Signature-256"), "{log}");
}

#[test]
fn a_watched_manifest_url_is_deployed_on_change_only() {
    let s = Setup::new();
    s.gh.set_manifest(
        "shop.yml",
        "dest: /srv/a\ncommands: {pre: [\"echo one\"]}\n",
    );
    let config = s.path("watch.yml");
    std::fs::write(
        &config,
        format!(
            "apply_command: [sh, \"{}\"]\nwatches:\n  - name: shop\n    manifest: {{ url: \"{}\", interval: 100ms }}\n",
            s.path("record.sh").display(),
            s.gh.manifest_url("shop.yml")
        ),
    )
    .unwrap();
    let _w = s.spawn(&config, &[]);
    wait_until("first manifest deployed", DEADLINE, || {
        s.deploys().len() == 1
    });
    wait_until("three more polls", DEADLINE, || {
        s.gh.seen_under("/manifests/").len() >= 4
    });
    let polls = s.gh.seen_under("/manifests/");
    assert!(
        polls[1..]
            .iter()
            .all(|p| p.status == 304 && p.if_none_match.is_some()),
        "{polls:#?}"
    );
    assert_eq!(s.deploys().len(), 1);

    s.gh.set_manifest(
        "shop.yml",
        "dest: /srv/a\ncommands: {pre: [\"echo two\"]}\n",
    );
    wait_until("changed manifest deployed", DEADLINE, || {
        s.deploys().len() == 2
    });
    let second = s.deploys()[1].clone();
    assert!(s.manifest(&second).contains("echo two"));
    let n = s.gh.seen_under("/manifests/").len();
    wait_until("two more polls", DEADLINE, || {
        s.gh.seen_under("/manifests/").len() >= n + 2
    });
    assert_eq!(s.deploys().len(), 2);
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
    let out = cutover()
        .arg("watch")
        .arg("--state-dir")
        .arg(s.state_dir())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
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

#[test]
fn a_watched_s3_manifest_is_deployed_on_change_only() {
    let s = Setup::new();
    let moto = crate::support::s3::Moto::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(moto.put(
        "deploys",
        "shop.yml",
        b"dest: /srv/a\ncommands: {pre: [\"echo one\"]}\n".to_vec(),
    ));
    let config = s.path("watch.yml");
    std::fs::write(
        &config,
        format!(
            "apply_command: [sh, \"{}\"]\nwatches:\n  - name: shop\n    manifest: {{ url: \"s3://deploys/shop.yml\", interval: 100ms }}\n",
            s.path("record.sh").display(),
        ),
    )
    .unwrap();
    let env: Vec<(&str, String)> = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _w = s.spawn(&config, &env);
    wait_until("first manifest deployed", DEADLINE, || {
        s.deploys().len() == 1
    });
    let first = s.deploys()[0].clone();
    // Idle polls after the deploy: S3 answers the ETag with 304, recorded as "not modified".
    wait_until("an idle poll", DEADLINE, || {
        let st = s.status();
        st.contains(&format!("deployed:    {first}")) && st.contains("not modified (304)")
    });
    assert_eq!(s.deploys().len(), 1);

    rt.block_on(moto.put(
        "deploys",
        "shop.yml",
        b"dest: /srv/a\ncommands: {pre: [\"echo two\"]}\n".to_vec(),
    ));
    wait_until("changed manifest deployed", DEADLINE, || {
        s.deploys().len() == 2
    });
    let second = s.deploys()[1].clone();
    assert!(s.manifest(&second).contains("echo two"));
    wait_until("an idle poll after the change", DEADLINE, || {
        let st = s.status();
        st.contains(&format!("deployed:    {second}")) && st.contains("not modified (304)")
    });
    assert_eq!(s.deploys().len(), 2);
}
