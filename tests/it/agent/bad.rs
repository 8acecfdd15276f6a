//! Bad input ends in one clear line, the failure hooks when the contract says so, an untouched
//! dest and exit 1: the data-driven manifest corpus, checksum mismatches, hostile archives.

use std::sync::atomic::Ordering;

use super::fetch::{Origin, Reply};
use super::{read, sha256_hex, snapshot, tar_gz, Entry, Site};
use crate::support;

/// Walks fixtures/bad-manifests/*.yml: each must fail with its `.err` substring, run no hooks
/// (manifest errors never do) and exit 1.
#[test]
fn every_bad_manifest_fails_with_its_expected_message() {
    let dir = support::fixture("bad-manifests");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/bad-manifests")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "the corpus is there: {names:?}");
    let mut failures = Vec::new();
    for yml in &names {
        let expected = read(&yml.with_extension("err")).trim_end().to_owned();
        let site = Site::new();
        let mut cmd = site.agent();
        cmd.env_remove("CUTOVER_TEST_UNSET_VAR")
            .arg("apply")
            .arg(yml);
        let run = site.run_with(&mut cmd, "");
        let stderr = run.stderr();
        let lines: Vec<_> = stderr.lines().filter(|l| l.contains(&expected)).collect();
        if run.code() != Some(1) || lines.is_empty() {
            failures.push(format!(
                "{}: exit {:?}, expected {expected:?} in:\n{stderr}",
                yml.display(),
                run.code()
            ));
        } else if site.path("cwd/failure-ran").exists() {
            failures.push(format!(
                "{}: failure hooks ran on a manifest error",
                yml.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_checksum_mismatch_runs_failure_without_pre_and_leaves_dest_alone() {
    let site = Site::new();
    let before = site.existing_dest("index.html", "v1");
    let (src, _) = site.archive("a.tar.gz", None, &[Entry::File("index.html", b"v2")]);
    let wrong = "0".repeat(64);
    let url = site.manifest(
        "m.yml",
        &format!("src: {src}\nchecksum: {wrong}\ndest: @DEST@\ncommands:\n  pre:\n    - touch pre-ran\n  failure:\n    - cat > failure-stdin\n"),
    );
    site.run(&url, &[])
        .expect_code(1)
        .expect_stderr(&format!("Deploy manifest failed: {url}"));
    assert_eq!(snapshot(&site.dest()), before);
    assert!(
        !site.path("cwd/pre-ran").exists(),
        "a mismatch runs failure without pre"
    );
    let stdin = read(&site.path("cwd/failure-stdin"));
    assert!(stdin.contains("Deploy manifest failed"), "{stdin}");
}

#[test]
fn md5_sha1_and_sha512_checksums_are_accepted_in_any_case() {
    use digest::Digest;
    let site = Site::new();
    let bytes = super::tar_gz(None, &[Entry::File("a", b"1")]);
    let path = site.path("archives/a.tar.gz");
    std::fs::write(&path, &bytes).expect("archive");
    for sum in [
        hex::encode(md5::Md5::digest(&bytes)),
        hex::encode(sha1::Sha1::digest(&bytes)).to_uppercase(),
        hex::encode(sha2::Sha512::digest(&bytes)),
    ] {
        let url = site.manifest(
            "m.yml",
            &format!(
                "src: file://{}\nchecksum: {sum}\ndest: @DEST@\n",
                path.display()
            ),
        );
        site.run(&url, &[]).expect_code(0);
    }
}

#[test]
fn hostile_and_truncated_archives_fail_and_write_nothing_outside() {
    let cases: [(&str, Vec<u8>); 6] = [
        (
            "dotdot",
            super::tar_gz(None, &[Entry::Raw("../escaped.txt", b"evil")]),
        ),
        (
            "absolute",
            super::tar_gz(None, &[Entry::Raw("/tmp/cutover-escaped-abs.txt", b"evil")]),
        ),
        (
            "escaping symlink",
            super::tar_gz(
                None,
                &[
                    Entry::Symlink("link", "../.."),
                    Entry::File("link/escaped.txt", b"evil"),
                ],
            ),
        ),
        // Each link stays inside on its own; followed one through the other, they climb out
        // to dest's parent (the second one, once `a/l` is the root, reads `root/..`).
        (
            "a link written through an earlier link",
            super::tar_gz(
                None,
                &[
                    Entry::Symlink("a/l", ".."),
                    Entry::Dir("a/l/b", 0o755),
                    Entry::Symlink("a/l/b/l2", "../.."),
                    Entry::File("a/l/b/l2/escaped.txt", b"evil"),
                ],
            ),
        ),
        (
            "'..' after a link in a link target",
            super::tar_gz(
                None,
                &[
                    Entry::Symlink("a/l", ".."),
                    Entry::Symlink("x", "a/l/.."),
                    Entry::File("x/escaped.txt", b"evil"),
                ],
            ),
        ),
        ("truncated", {
            let full = super::tar_gz(None, &[Entry::File("big", &[7u8; 200_000])]);
            full[..full.len() / 2].to_vec()
        }),
    ];
    for (name, bytes) in cases {
        let site = Site::new();
        let before = site.existing_dest("keep", "v1");
        let path = site.path("archives/x.tar.gz");
        std::fs::write(&path, &bytes).expect("archive");
        let url = site.manifest(
            "m.yml",
            &format!(
                "src: file://{}\nchecksum: {}\ndest: @DEST@\ncommands:\n  failure:\n    - touch failure-ran\n",
                path.display(),
                super::sha256_hex(&bytes)
            ),
        );
        let run = site.run(&url, &[]);
        run.expect_code(1).expect_stderr("Deploy manifest failed");
        site.assert_failed_cleanly(&before, name);
        assert!(
            !site.path("escaped.txt").exists(),
            "{name}: nothing written outside"
        );
        assert!(!std::path::Path::new("/tmp/cutover-escaped-abs.txt").exists());
    }
}

#[test]
fn unknown_manifest_keys_warn_but_deploy() {
    let site = Site::new();
    let url = site.deploy_manifest("owner: ops\n", &[Entry::File("a", b"1")]);
    site.run(&url, &[])
        .expect_code(0)
        .expect_stderr("warning: unknown manifest key \"owner\" is ignored");
}

/// Regression: the `app:` section was checked only by the supervisor, after the release was
/// fetched, unpacked and put in `dest/releases/`, where a bad `listen` left it behind.
#[test]
fn an_app_with_a_bad_listen_is_refused_before_its_archive_is_fetched() {
    let site = Site::new();
    let bytes = tar_gz(None, &[Entry::File("VERSION", b"v1")]);
    let sum = sha256_hex(&bytes);
    let origin = Origin::start(move |_, _| Reply::Body(bytes.clone()));
    let url = site.manifest(
        "m.yml",
        &format!(
            "src: {}\nchecksum: {sum}\ndest: @DEST@\napp:\n  name: shop\n  version: v1\n  \
             run: ./shop --port {{port}}\n  listen: nowhere:8080\ncommands:\n  failure:\n    \
             - touch failure-ran\n",
            origin.url("/shop.tar.gz")
        ),
    );
    site.run(&url, &[]).expect_code(1).expect_stderr(&format!(
        "Deploy manifest failed: {url}: app: listen \"nowhere:8080\""
    ));
    assert_eq!(
        origin.requests.load(Ordering::SeqCst),
        0,
        "the archive was fetched"
    );
    assert!(
        !site.dest().join("releases").exists(),
        "a release was left in {}",
        site.dest().display()
    );
    assert!(
        !site.path("cwd/failure-ran").exists(),
        "failure hooks ran on a manifest error"
    );
}
