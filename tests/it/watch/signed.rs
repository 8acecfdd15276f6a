//! `cutover watch` with the real `cutover apply`: a watched manifest is deployed only with a
//! trusted signature (fetched beside it, looked for again after a refusal), a GitHub watch cannot
//! start when manifests must be signed, and release assets are fetched with the watcher's token.

use std::path::PathBuf;

use super::{Setup, DEADLINE};
use crate::support::github::AssetSpec;
use crate::support::minisign::{fresh, trust_file, Key};
use crate::support::wait_until;

/// A tar.gz holding `index.html` with `body`.
fn archive(body: &[u8]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "index.html", body).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn a_watched_manifest_deploys_only_with_a_trusted_signature() {
    let s = Setup::new();
    let trusted = Key::generate();
    let trust = trust_file(s.dir.path(), &[&trusted]);
    let bytes = archive(b"signed release");
    let src = s.path("release.tar.gz");
    std::fs::write(&src, &bytes).unwrap();
    let manifest = format!(
        "src: file://{}\nchecksum: {}\ndest: {}\nsync_strategy: mv\n",
        src.display(),
        sha256(&bytes),
        s.path("dest").display()
    );
    let signed = s.path("shop.yml");
    std::fs::write(&signed, &manifest).unwrap();
    let sig_path = PathBuf::from(format!("{}.minisig", signed.display()));
    // First a signature by a key this host does not trust.
    Key::generate().sign(&signed, &fresh("shop", "1"));
    s.gh.set_manifest("shop.yml", &manifest);
    s.gh.set_manifest(
        "shop.yml.minisig",
        &std::fs::read_to_string(&sig_path).unwrap(),
    );
    let config = s.path("watch.yml");
    std::fs::write(
        &config,
        format!(
            "watches:\n  - name: shop\n    manifest: {{ url: \"{}\", interval: 100ms }}\n",
            s.gh.manifest_url("shop.yml")
        ),
    )
    .unwrap();
    let trust_env = trust.display().to_string();
    let _w = s.spawn(&config, &[("CUTOVER_TRUST", &trust_env)]);
    wait_until("the untrusted signature refused", DEADLINE, || {
        s.status().contains("apply exited 8")
    });
    assert!(!s.path("dest").exists(), "nothing placed");

    // The manifest stays, its signature is replaced by a trusted one: deployed.
    trusted.sign(&signed, &fresh("shop", "1"));
    s.gh.set_manifest(
        "shop.yml.minisig",
        &std::fs::read_to_string(&sig_path).unwrap(),
    );
    wait_until("the signed manifest deployed", DEADLINE, || {
        s.path("dest/index.html").exists()
    });
    assert_eq!(
        std::fs::read_to_string(s.path("dest/index.html")).unwrap(),
        "signed release"
    );
}

#[test]
fn a_github_watch_cannot_start_when_manifests_must_be_signed() {
    let s = Setup::new();
    let trust = trust_file(s.dir.path(), &[&Key::generate()]);
    let config = s.github_config("1h", "", "");
    let out = s
        .watch(&config)
        .arg("--trust")
        .arg(&trust)
        // --once: without the check it would end by itself, not run for ever.
        .arg("--once")
        .output()
        .expect("run cutover watch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "watch shop renders its manifests from `template:`, which no trusted key signs"
        ),
        "{stderr}"
    );
    assert!(s.gh.seen().is_empty(), "nothing was asked of GitHub");
}

#[test]
fn release_assets_are_fetched_through_the_api_with_the_token() {
    let s = Setup::new();
    let bytes = archive(b"private release");
    s.gh.publish(
        "v1.0.0",
        false,
        vec![AssetSpec::new("shop-1.0.0-linux-amd64.tar.gz", &bytes)],
    );
    let config = s.path("watch.yml");
    std::fs::write(
        &config,
        format!(
            r#"watches:
  - name: shop
    github:
      repo: octo/shop
      asset: "shop-*-linux-amd64.tar.gz"
      interval: 1h
      api_url: "{api}"
    template:
      dest: "{dest}"
      sync_strategy: mv
"#,
            api = s.gh.api_url(),
            dest = s.path("dest").display()
        ),
    )
    .unwrap();
    let _w = s.spawn(&config, &[("GH_TOKEN", "ghp_t0ken")]);
    wait_until("the release deployed", DEADLINE, || {
        s.path("dest/index.html").exists()
    });
    let downloads = s.gh.seen_under("/repos/octo/shop/releases/assets/");
    assert_eq!(downloads.len(), 1, "{downloads:#?}");
    assert_eq!(downloads[0].status, 200);
    assert_eq!(
        downloads[0].authorization.as_deref(),
        Some("Bearer ghp_t0ken")
    );
    assert_eq!(
        downloads[0].accept.as_deref(),
        Some("application/octet-stream")
    );
    assert!(
        s.gh.seen_under("/octo/shop/releases/download/").is_empty(),
        "the browser URL, which takes no token, is not used"
    );
    // The token is not on the agent's command line, where any user could read it.
    let manifest = s.manifest("1.0.0");
    assert!(!manifest.contains("ghp_t0ken"), "{manifest}");
}
