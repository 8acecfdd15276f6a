//! Placing files: rsync with `--delete`, excludes, `mv` onto absent/empty/non-empty dest, and
//! `dest_mode` against the archive's own `./` entry (stretcher's suite, ported).

use std::os::unix::fs::PermissionsExt;

use super::{mode_of, read, snapshot, Entry, Site};

const APP: &[Entry] = &[
    Entry::File("index.html", b"v2\n"),
    Entry::Dir("lib", 0o755),
    Entry::File("lib/app.sh", b"echo app\n"),
];

#[test]
fn rsync_deploy_replaces_files_and_deletes_stale_ones() {
    let site = Site::new();
    std::fs::create_dir_all(site.dest().join("old")).expect("dest");
    std::fs::write(site.dest().join("old/stale.txt"), "stale").expect("stale");
    std::fs::write(site.dest().join("index.html"), "v1\n").expect("v1");
    let url = site.deploy_manifest("", APP);
    site.run(&format!("{url}\n"), &[])
        .expect_code(0)
        .expect_stderr(&format!("Deploy manifest succeeded: {url}"));
    assert_eq!(read(&site.dest().join("index.html")), "v2\n");
    assert_eq!(read(&site.dest().join("lib/app.sh")), "echo app\n");
    assert!(
        !site.dest().join("old").exists(),
        "--delete removes what the archive lacks"
    );
    // The staging directory beside dest is gone after the run.
    let leftovers: Vec<_> = std::fs::read_dir(site.path(""))
        .expect("site")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !["cwd", "state", "archives", "dest", "manifest.yml"].contains(&n.as_str()))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

#[test]
fn rsync_output_goes_to_the_log() {
    let site = Site::new();
    let url = site.deploy_manifest("", APP);
    // -rsync-verbose -v (v1 spelling): rsync lists the files it copies.
    site.run(&url, &["-rsync-verbose", "-v"])
        .expect_code(0)
        .expect_stderr("lib/app.sh");
}

#[test]
fn excluded_paths_in_dest_survive_delete() {
    let site = Site::new();
    std::fs::create_dir_all(site.dest().join("logs")).expect("dest");
    std::fs::write(site.dest().join("logs/today.log"), "keep").expect("log");
    std::fs::write(site.dest().join("local.conf"), "keep").expect("conf");
    std::fs::write(site.dest().join("junk"), "go").expect("junk");
    let entries = [
        Entry::File("index.html", b"v2\n"),
        Entry::File("exclude.txt", b"local.conf\n"),
    ];
    let url = site.deploy_manifest(
        "excludes:\n  - logs/\nexclude_from: exclude.txt\n",
        &entries,
    );
    site.run(&url, &[]).expect_code(0);
    assert_eq!(read(&site.dest().join("logs/today.log")), "keep");
    assert_eq!(read(&site.dest().join("local.conf")), "keep");
    assert!(!site.dest().join("junk").exists());
    assert_eq!(read(&site.dest().join("index.html")), "v2\n");
}

#[test]
fn a_missing_exclude_from_file_fails_before_touching_dest() {
    let site = Site::new();
    let before = site.existing_dest("keep", "x");
    let url = site.deploy_manifest("exclude_from: nope.txt\n", APP);
    site.run(&url, &[])
        .expect_code(1)
        .expect_stderr("exclude_from \"nope.txt\" is not a file in the archive");
    assert_eq!(snapshot(&site.dest()), before);
}

fn mv_manifest(site: &Site) -> String {
    site.deploy_manifest(
        "sync_strategy: mv\ncommands:\n  failure:\n    - touch ../failure-ran\n",
        APP,
    )
}

#[test]
fn mv_into_an_absent_dest() {
    let site = Site::new();
    let url = mv_manifest(&site);
    site.run(&url, &[]).expect_code(0);
    assert_eq!(read(&site.dest().join("index.html")), "v2\n");
    assert_eq!(mode_of(&site.dest()), 0o755);
}

#[test]
fn mv_replaces_an_empty_dest() {
    let site = Site::new();
    std::fs::create_dir(site.dest()).expect("empty dest");
    let url = mv_manifest(&site);
    site.run(&url, &[]).expect_code(0);
    assert_eq!(read(&site.dest().join("lib/app.sh")), "echo app\n");
}

#[test]
fn mv_refuses_a_non_empty_dest_and_leaves_it_untouched() {
    let site = Site::new();
    let before = site.existing_dest("index.html", "v1\n");
    let url = mv_manifest(&site);
    site.run(&url, &[])
        .expect_code(1)
        .expect_stderr("is not empty: sync_strategy mv only replaces an absent or empty directory");
    assert_eq!(snapshot(&site.dest()), before);
    assert!(site.path("failure-ran").exists(), "failure hooks run");
}

#[test]
fn dest_mode_wins_over_the_archives_root_entry() {
    let site = Site::new();
    // An existing dest with another mode: rsync must carry the new mode onto it.
    std::fs::create_dir(site.dest()).expect("dest");
    std::fs::set_permissions(site.dest(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let (src, sum) = site.archive("root.tar.gz", Some(0o700), APP);
    let url = site.manifest(
        "m.yml",
        &format!("src: {src}\nchecksum: {sum}\ndest: @DEST@\ndest_mode: 0711\n"),
    );
    site.run(&url, &[]).expect_code(0);
    assert_eq!(
        mode_of(&site.dest()),
        0o711,
        "YAML 0711 is octal, as in stretcher"
    );
}

#[test]
fn dest_mode_defaults_to_0755_with_and_without_a_root_entry() {
    for root in [Some(0o700), None] {
        let site = Site::new();
        let url = site.deploy_manifest_to("@DEST@", root, "", APP);
        site.run(&url, &[]).expect_code(0);
        assert_eq!(mode_of(&site.dest()), 0o755, "root entry {root:?}");
    }
}

#[test]
fn dest_mode_applies_with_mv_too() {
    let site = Site::new();
    let url = site.deploy_manifest("sync_strategy: mv\ndest_mode: 0750\n", APP);
    site.run(&url, &[]).expect_code(0);
    assert_eq!(mode_of(&site.dest()), 0o750);
}

#[test]
fn a_missing_dest_parent_is_a_clear_error() {
    let site = Site::new();
    let url = site.deploy_manifest_to("@SITE@/no/such/dest", None, "", APP);
    site.run(&url, &[])
        .expect_code(1)
        .expect_stderr("no/such: create it first");
}

#[test]
fn a_relative_dest_is_relative_to_the_start_directory() {
    let site = Site::new();
    let url = site.deploy_manifest_to("out", None, "", APP);
    site.run(&url, &[]).expect_code(0);
    assert_eq!(read(&site.path("cwd/out/index.html")), "v2\n");
}

#[test]
fn a_missing_rsync_says_how_to_install_it() {
    let site = Site::new();
    // A PATH with a shell but no rsync.
    let bin = site.path("bin");
    std::fs::create_dir(&bin).expect("bin");
    std::os::unix::fs::symlink("/bin/sh", bin.join("sh")).expect("sh link");
    let before = site.existing_dest("keep", "v1");
    let url = site.deploy_manifest("", APP);
    let mut cmd = site.agent();
    cmd.env("PATH", &bin);
    site.run_with(&mut cmd, &url)
        .expect_code(1)
        .expect_stderr("rsync not found: install it (apt-get install rsync)");
    assert_eq!(snapshot(&site.dest()), before);
}
