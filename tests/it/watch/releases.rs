//! GitHub releases: deployed once, idle polls that cost a 304, rate-limit pauses (a
//! `retry-after` to the millisecond), failed, ignored, prerelease and unverifiable versions
//! passed over with their reason, and the agent's own reason for a failed deploy.

use std::time::{Duration, SystemTime};

use super::{asset, Setup, DEADLINE};
use crate::support::archive::{compress, sample_tar, Compression};
use crate::support::github::AssetSpec;
use crate::support::supervisor::Supervisor;
use crate::support::{cutover, wait_until};

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
    let _w = s.spawn(
        &s.github_config("100ms", "", ""),
        &[("GH_TOKEN", "ghp_t0ken")],
    );

    wait_until("1.0.0 deployed", DEADLINE, || s.deploys() == ["1.0.0"]);
    let manifest = s.manifest("1.0.0");
    assert!(
        manifest.contains(&format!("checksum: {}", v1.sha256())),
        "{manifest}"
    );
    // With a token, `src` is the asset's API URL (the browser URL of a private asset takes none).
    assert!(
        manifest.contains("/repos/octo/shop/releases/assets/100"),
        "{manifest}"
    );
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
    assert_eq!(lists[0].authorization.as_deref(), Some("Bearer ghp_t0ken"));
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
    let log = std::fs::read_to_string(s.path("watch.log")).unwrap();
    assert!(
        !log.contains("ghp_t0ken"),
        "the token never reaches the log"
    );
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
fn a_retry_after_holds_the_next_request_back_to_the_millisecond() {
    let s = Setup::new();
    s.gh.publish("v1.0.0", false, vec![asset("1.0.0")]);
    s.gh.retry_after(1, 1);
    let _w = s.spawn(&s.github_config("50ms", "", ""), &[]);
    wait_until("1.0.0 deployed after the retry-after", DEADLINE, || {
        s.deploys() == ["1.0.0"]
    });
    // Twice: a pause cut to whole seconds ends early at nearly any sub-second moment, so two
    // rounds leave such a bug almost no chance to pass.
    let before = s.gh.release_lists().len();
    s.gh.retry_after(1, 1);
    wait_until(
        "a list answered after the second retry-after",
        DEADLINE,
        || {
            let lists = s.gh.release_lists();
            lists.len() > before
                && lists[before..].iter().any(|l| l.status == 429)
                && lists.last().is_some_and(|l| l.status != 429)
        },
    );
    let lists = s.gh.release_lists();
    let mut checked = 0;
    for (i, refused) in lists.iter().enumerate().filter(|(_, l)| l.status == 429) {
        let next = lists.get(i + 1).expect("a request after each 429");
        let waited = next.instant.duration_since(refused.instant);
        assert!(
            waited >= Duration::from_secs(1),
            "asked again {waited:?} after `retry-after: 1`: {lists:#?}"
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "{lists:#?}");
}

#[test]
fn a_checksum_mismatch_shows_in_status_not_the_failure_hooks_output() {
    let s = Setup::new();
    let archive = compress(&sample_tar(0), Compression::Gzip);
    let wrong = "0".repeat(64);
    s.gh.publish(
        "v1.0.0",
        false,
        vec![AssetSpec::new("shop-1.0.0-linux-amd64.tar.gz", &archive).claiming(&wrong)],
    );
    // No apply_command: the real `cutover apply` deploys, and its failure hook speaks last.
    let config = s.path("watch.yml");
    std::fs::write(
        &config,
        format!(
            r#"watches:
  - name: shop
    github: {{ repo: octo/shop, asset: "shop-*-linux-amd64.tar.gz", interval: 1h, api_url: "{api}" }}
    template:
      dest: "{dest}"
      commands:
        failure: ["echo paging the on-call >&2"]
"#,
            api = s.gh.api_url(),
            dest = s.path("dest").display(),
        ),
    )
    .unwrap();
    let (ok, out) = s.once(&config);
    assert!(!ok, "a failed deploy fails --once: {out}");
    let log = std::fs::read_to_string(s.state_dir().join("watch/shop/deploy-1.0.0.log")).unwrap();
    assert!(log.contains("paging the on-call"), "the hook ran: {log}");

    let status = s.status();
    assert!(
        status.contains("never again 1.0.0: failed: apply exited 1: checksum mismatch for http://"),
        "{status}"
    );
    assert!(
        status.contains(&format!("expected sha256 {wrong}")),
        "{status}"
    );
    assert!(!status.contains("paging the on-call"), "{status}");
    assert!(!status.contains("running failure command"), "{status}");

    // `cutover status` shows the watches below the apps, with the same reason.
    let supervisor = Supervisor::start();
    let out = cutover()
        .arg("status")
        .arg("--socket")
        .arg(&supervisor.socket)
        .arg("--state-dir")
        .arg(s.state_dir())
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{status}");
    assert!(
        status.contains("never again 1.0.0: failed: apply exited 1: checksum mismatch for http://"),
        "{status}"
    );
    assert!(!status.contains("paging the on-call"), "{status}");

    // And scripts read it from `watch --status --json`.
    let out = s.watch_state(&["--status", "--json"]);
    let watches: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed = watches[0]["failed"]["1.0.0"].as_str().unwrap_or_default();
    assert!(
        failed.starts_with("apply exited 1: checksum mismatch for http://"),
        "{watches}"
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
