//! `cutover apply --stage-only`: an `app:` release fetched, verified and unpacked into
//! `dest/releases/VERSION` with no hook run and no supervisor asked (the site has none), a
//! second stage of the same checksum fetching nothing, a tree staged from another checksum
//! staged again, and a manifest without `app:` refused.

use super::{tar_gz, Entry, Site};
use crate::support::http_server::HttpServer;

/// Serves a one-file archive with `body` at `path`; returns its URL and sha256.
fn serve(http: &HttpServer, path: &str, body: &[u8]) -> (String, String) {
    let archive = tar_gz(None, &[Entry::File("index.html", body)]);
    http.serve(path, archive.clone());
    (http.url(path), super::sha256_hex(&archive))
}

/// An app manifest of `src` as version 3, with hooks that leave a mark in cwd/.
fn app_manifest(site: &Site, src: &str, sum: &str) -> String {
    site.manifest(
        "shop.yml",
        &format!(
            "src: {src}\nchecksum: {sum}\ndest: @DEST@\ncommands:\n  pre: [touch pre-ran]\n  post: [touch post-ran]\n  success: [touch success-ran]\n  failure: [touch failure-ran]\napp:\n  name: shop\n  version: \"3\"\n  run: ./shop\n  listen: 127.0.0.1:{}\n",
            crate::support::free_port()
        ),
    )
}

fn fetches(http: &HttpServer, path: &str) -> usize {
    let line = format!("GET {path} ");
    http.request_heads()
        .iter()
        .filter(|h| h.starts_with(&line))
        .count()
}

#[test]
fn stage_only_unpacks_the_release_in_place_and_runs_nothing() {
    let site = Site::new();
    let http = HttpServer::start();
    let (src, sum) = serve(&http, "/a.tar.gz", b"build a");
    let url = app_manifest(&site, &src, &sum);
    site.run("", &["apply", "--stage-only", &url])
        .expect_code(0)
        .expect_stderr("staged shop 3 in")
        .expect_stderr(&format!("Stage manifest succeeded: {url}"));
    let release = site.dest().join("releases/3");
    assert_eq!(super::read(&release.join("index.html")), "build a");
    assert!(!site.dest().join("current").exists(), "nothing goes live");
    for mark in ["pre-ran", "post-ran", "success-ran", "failure-ran"] {
        assert!(
            !site.path("cwd").join(mark).exists(),
            "no hook runs: {mark}"
        );
    }
    // Again: already staged from the same checksum, nothing fetched.
    site.run("", &["apply", "--stage-only", &url])
        .expect_code(0)
        .expect_stderr("already staged");
    assert_eq!(fetches(&http, "/a.tar.gz"), 1);
}

#[test]
fn a_tree_not_staged_from_the_manifests_checksum_is_staged_again() {
    let site = Site::new();
    let http = HttpServer::start();
    let (src_a, sum_a) = serve(&http, "/a.tar.gz", b"build a");
    let (src_b, sum_b) = serve(&http, "/b.tar.gz", b"build b");
    let a = app_manifest(&site, &src_a, &sum_a);
    site.run("", &["apply", "--stage-only", &a]).expect_code(0);
    // Version 3 again, from another archive: the marker names a's checksum, so b is fetched.
    let b = app_manifest(&site, &src_b, &sum_b);
    site.run("", &["apply", "--stage-only", &b])
        .expect_code(0)
        .expect_stderr("staging it again");
    assert_eq!(
        super::read(&site.dest().join("releases/3/index.html")),
        "build b"
    );
    assert_eq!(fetches(&http, "/b.tar.gz"), 1);
    // A tree with no marker at all (placed by hand, or by a crash) is not trusted either.
    std::fs::remove_file(site.dest().join("releases/.3.staged")).unwrap();
    site.run("", &["apply", "--stage-only", &b])
        .expect_code(0)
        .expect_stderr("staging it again");
    assert_eq!(fetches(&http, "/b.tar.gz"), 2);
}

#[test]
fn stage_only_refuses_a_manifest_without_app_and_leaves_dest_alone() {
    let site = Site::new();
    let before = site.existing_dest("index.html", "live");
    let url = site.deploy_manifest(
        "commands:\n  pre: [touch pre-ran]\n  failure: [touch failure-ran]\n",
        &[Entry::File("index.html", b"new")],
    );
    site.run("", &["apply", "--stage-only", &url])
        .expect_code(1)
        .expect_stderr(
            "nothing to stage: --stage-only needs a manifest with `src` and an `app:` section",
        );
    assert_eq!(super::snapshot(&site.dest()), before);
    assert!(!site.path("cwd/pre-ran").exists());
    assert!(!site.path("cwd/failure-ran").exists());
}
