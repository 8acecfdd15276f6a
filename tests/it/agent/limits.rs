//! The host's limits on a hostile or runaway release: compression bombs, a million files, a
//! `src` that never ends, a filling disk. Each stops cleanly: one line naming the flag that
//! raises the limit, the failure hooks, an untouched dest and no staging directory left behind.

use std::path::Path;

use super::fetch::{Origin, Reply};
use super::{sha256_hex, snapshot, Site};
use crate::support::archive::{
    endless_gzip_bomb, endless_tar_head, gzip_bomb_tar, many_files_tar_gz, zip_bomb,
};
use crate::support::tmpfs::Tmpfs;

/// Deploys `src` to `dest` and checks the refusal: exit 1, `expected` on the final line, the
/// failure hooks run, dest as it was and no staging directory left in dest's parent.
#[track_caller]
fn expect_refused(
    site: &Site,
    dest: &Path,
    (src, sum): (&str, &str),
    args: &[&str],
    expected: &str,
) {
    std::fs::create_dir_all(dest).expect("dest");
    std::fs::write(dest.join("keep"), "v1").expect("keep");
    let before = snapshot(dest);
    let url = site.manifest(
        "m.yml",
        &format!(
            "src: {src}\nchecksum: {sum}\ndest: {}\ncommands:\n  failure:\n    - touch failure-ran\n",
            dest.display()
        ),
    );
    let run = site.run(&url, args);
    run.expect_code(1);
    let last = run
        .stderr()
        .lines()
        .find(|line| line.contains("Deploy manifest failed"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no final line in:\n{}", run.stderr()));
    assert!(last.contains(expected), "{expected:?} not in {last:?}");
    assert_eq!(snapshot(dest), before, "dest untouched");
    assert!(site.path("cwd/failure-ran").exists(), "failure hooks run");
    let staging: Vec<_> = std::fs::read_dir(dest.parent().expect("parent"))
        .expect("read dest's parent")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.starts_with(".cutover-staging-"))
        .collect();
    assert!(staging.is_empty(), "staging left behind: {staging:?}");
}

/// Writes `bytes` under archives/ and returns their `file://` URL.
fn archive(site: &Site, name: &str, bytes: &[u8]) -> String {
    let path = site.path("archives").join(name);
    std::fs::write(&path, bytes).expect("write archive");
    format!("file://{}", path.display())
}

/// [`expect_refused`] for `bytes` as archive `name` of a new site, deployed to its dest.
#[track_caller]
fn expect_archive_refused(name: &str, bytes: &[u8], args: &[&str], expected: &str) {
    let site = Site::new();
    let src = archive(&site, name, bytes);
    expect_refused(
        &site,
        &site.dest(),
        (&src, &sha256_hex(bytes)),
        args,
        expected,
    );
}

#[test]
fn a_gzip_bomb_stops_at_max_unpacked_size() {
    // 64 MiB of zeros in about 70 KB.
    let bytes = gzip_bomb_tar(64 << 20);
    expect_archive_refused("bomb.tar.gz", &bytes, &["--max-unpacked-size", "2MiB"], "unpacks to more than 2 MiB: if the release is really that large, raise --max-unpacked-size");
}

#[test]
fn a_bomb_still_downloading_stops_at_the_limit_before_its_checksum_is_known() {
    let site = Site::new();
    // The archive unpacks as it downloads, and this download never ends: its (wrong) checksum
    // can never be known, only the limit ends it. A 32 MiB disk stands for the host's: the
    // unpack must stop long before it is full.
    let disk = Tmpfs::mount(&site.path("disk"), "32m", 100_000);
    let (head, body) = endless_gzip_bomb();
    let origin = Origin::start(move |_, _| Reply::Endless {
        head: head.clone(),
        body: body.clone(),
    });
    expect_refused(
        &site,
        &disk.path().join("dest"),
        (&origin.url("/bomb.tar.gz"), &"0".repeat(64)),
        // The small disk is below the default reserve; --timeout only keeps a regression from
        // hanging the suite.
        &[
            "--max-unpacked-size",
            "2MiB",
            "--min-free-space",
            "0",
            "--timeout",
            "120",
        ],
        "unpacks to more than 2 MiB",
    );
}

#[test]
fn a_zip_bomb_stops_at_max_unpacked_size() {
    let bytes = zip_bomb(16 << 20);
    expect_archive_refused(
        "bomb.zip",
        &bytes,
        &["--max-unpacked-size=2MiB"],
        "unpacks to more than 2 MiB",
    );
}

#[test]
fn too_many_files_stop_at_max_entries() {
    let bytes = many_files_tar_gz(3000, "");
    expect_archive_refused("many.tar.gz", &bytes, &["--max-entries", "1000"], "has more than 1000 entries (directories included): if the release really has that many files, raise --max-entries");
}

#[test]
fn the_directories_a_deep_path_implies_count_as_entries() {
    // One file 1200 directories deep: 1201 inodes from a single tar entry.
    let deep = "d/".repeat(1200);
    let bytes = many_files_tar_gz(1, &deep);
    expect_archive_refused(
        "deep.tar.gz",
        &bytes,
        &["--max-entries", "1000"],
        "has more than 1000 entries",
    );
}

#[test]
fn free_space_is_checked_as_the_archive_unpacks() {
    let site = Site::new();
    // A 64 MiB disk for dest's parent: 48 MiB of content would leave 16 MiB, below the reserve.
    let disk = Tmpfs::mount(&site.path("disk"), "64m", 100_000);
    let bytes = gzip_bomb_tar(48 << 20);
    let src = archive(&site, "big.tar.gz", &bytes);
    expect_refused(
        &site,
        &disk.path().join("dest"),
        (&src, &sha256_hex(&bytes)),
        &["--min-free-space", "24MiB"],
        "would leave less than 24 MiB free on the filesystem of",
    );
}

#[test]
fn free_inodes_are_checked_as_the_archive_unpacks() {
    let site = Site::new();
    // 3000 inodes; 2500 files would leave 500, below the reserve of 1000, which the check after
    // the 2048th entry sees.
    let disk = Tmpfs::mount(&site.path("disk"), "64m", 3000);
    let bytes = many_files_tar_gz(2500, "");
    let src = archive(&site, "many.tar.gz", &bytes);
    expect_refused(
        &site,
        &disk.path().join("dest"),
        (&src, &sha256_hex(&bytes)),
        // The 64 MiB disk is below the default space reserve: only inodes are under test.
        &["--min-free-inodes", "1000", "--min-free-space", "0"],
        "would leave fewer than 1000 free inodes on the filesystem of",
    );
}

#[test]
fn a_src_that_never_ends_stops_at_max_src_size() {
    let site = Site::new();
    // A tar announcing a 1 TiB file, then zeros for as long as anyone reads them.
    let origin = Origin::start(|_, _| Reply::Endless {
        head: endless_tar_head(),
        body: vec![0; 64 << 10],
    });
    let wrong = "0".repeat(64);
    // --timeout only keeps a regression from hanging the suite.
    expect_refused(
        &site,
        &site.dest(),
        (&origin.url("/endless.tar"), &wrong),
        &["--max-src-size", "8MiB", "--timeout", "120"],
        "is larger than 8 MiB: if the archive is really that large, raise --max-src-size",
    );
}

#[test]
fn a_src_announced_larger_than_max_src_size_is_refused_before_it_is_read() {
    let site = Site::new();
    // Headers announcing 1 MB, then silence: only the announcement can end this in time.
    let origin = Origin::start(|_, _| Reply::Stall);
    expect_refused(
        &site,
        &site.dest(),
        (&origin.url("/big.tar.gz"), &"0".repeat(64)),
        &["--max-src-size", "1000", "--timeout", "120"],
        "is larger than 1000 bytes",
    );
}
