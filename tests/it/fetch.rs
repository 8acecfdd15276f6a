//! Fetching and unpacking: sources (file, HTTP, S3), checksums, formats and hostile archives.
//!
//! These call the library directly (`fetch_and_unpack`, `fetch_bytes`) against real servers:
//! the test HTTP server in `support::http_server` and a real `moto_server` for S3. This file holds the
//! shared helpers and the archive cases (read from local files); `http` and `s3` the origins.

mod http;
mod s3;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover::agent::checksum::Checksum;
use cutover::agent::limits::Limits;
use cutover::agent::log::RunLog;
use cutover::agent::pipeline::{fetch_and_unpack, PipelineError, Staged, STAGING_PREFIX};
use cutover::agent::source::FetchOptions;
use cutover::agent::unpack::Format;

use crate::support::archive::{self, Compression, Hostile, MTIME};

/// A temp dir standing for `dest`'s parent, where staging directories are created.
fn parent() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Options for tests: short waits, no progress bar.
fn opts() -> FetchOptions {
    FetchOptions {
        retry_wait: Duration::from_millis(50),
        ..FetchOptions::default()
    }
}

/// Writes `bytes` to a file in its own temp dir and returns (dir, file:// URL).
fn file_url(bytes: &[u8], name: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write archive");
    let url = format!("file://{}", path.display());
    (dir, url)
}

async fn run(
    url: &str,
    sum: &str,
    parent: &Path,
    opts: &FetchOptions,
) -> (Result<Staged, PipelineError>, RunLog) {
    let log = RunLog::quiet(1 << 20);
    let checksum: Checksum = sum.parse().expect("valid checksum");
    let staging = (parent, STAGING_PREFIX);
    let result = fetch_and_unpack(url, &checksum, staging, opts, &Limits::default(), &log).await;
    (result, log)
}

/// Everything left in `parent`: after a failure it must be empty.
fn leftovers(parent: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(parent)
        .expect("read parent")
        .map(|e| e.expect("dir entry").path())
        .collect()
}

fn expect_err(result: Result<Staged, PipelineError>) -> String {
    match result {
        Ok(staged) => panic!("expected an error, got {:?}", staged.path()),
        Err(e) => e.to_string(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// The sample tree is all there, with its modes, mtimes and links.
fn assert_sample_tree(root: &Path) {
    let app = root.join("app");
    assert_eq!(
        std::fs::read_to_string(app.join("hello.txt")).unwrap(),
        "hello from the archive\n"
    );
    assert_eq!(mode(&app.join("hello.txt")), 0o640);
    assert_eq!(mode(&app.join("bin/run")), 0o755);
    assert_eq!(
        std::fs::metadata(app.join("hello.txt")).unwrap().mtime() as u64,
        MTIME
    );
    assert_eq!(std::fs::metadata(&app).unwrap().mtime() as u64, MTIME);
    assert_eq!(
        std::fs::read_link(app.join("current.txt")).unwrap(),
        Path::new("hello.txt")
    );
    let hard = std::fs::metadata(app.join("hard.txt")).unwrap();
    assert_eq!(
        hard.ino(),
        std::fs::metadata(app.join("hello.txt")).unwrap().ino()
    );
    // The archive's `./` entry gives the root its mode.
    assert_eq!(mode(root), 0o750);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tar_compression_unpacks_with_modes_mtimes_and_links() {
    let tar = archive::sample_tar(100_000);
    let expected = [
        (Compression::None, Format::Tar),
        (Compression::Gzip, Format::TarGz),
        (Compression::Xz, Format::TarXz),
        (Compression::Bzip2, Format::TarBz2),
        (Compression::Zstd, Format::TarZst),
    ];
    for (compression, format) in expected {
        let bytes = archive::compress(&tar, compression);
        let (_src, url) = file_url(&bytes, "release.archive");
        let parent = parent();
        let (result, log) = run(&url, &archive::sha256_hex(&bytes), parent.path(), &opts()).await;
        let staged = result.unwrap_or_else(|e| panic!("{compression:?}: {e}"));
        assert_eq!(staged.format, format);
        assert_eq!(staged.bytes, bytes.len() as u64);
        assert_eq!(staged.digest_hex, archive::sha256_hex(&bytes));
        assert_eq!(staged.root_mode, Some(0o750));
        assert!(staged.path().starts_with(parent.path()));
        let name = staged
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with(".cutover-staging-"), "{name}");
        assert_sample_tree(staged.path());
        assert_eq!(
            std::fs::read(staged.path().join("app/data/blob")).unwrap(),
            archive::random_bytes(100_000, 7)
        );
        assert!(log.contents().contains("sha256 ok"), "{}", log.contents());
        drop(staged);
        assert!(
            leftovers(parent.path()).is_empty(),
            "dropping Staged removes it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_unpacks_with_its_modes() {
    let bytes = archive::sample_zip();
    let (_src, url) = file_url(&bytes, "release.zip");
    let parent = parent();
    let (result, _) = run(&url, &archive::sha256_hex(&bytes), parent.path(), &opts()).await;
    let staged = result.unwrap();
    assert_eq!(staged.format, Format::Zip);
    let app = staged.path().join("app");
    assert_eq!(
        std::fs::read_to_string(app.join("hello.txt")).unwrap(),
        "hello from the zip\n"
    );
    assert_eq!(mode(&app.join("hello.txt")), 0o640);
    assert_eq!(mode(&app.join("bin/run")), 0o755);
    // The spool file is unnamed: only the staging directory is in the parent.
    assert_eq!(leftovers(parent.path()), vec![staged.path().to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_checksum_length_is_accepted_in_any_case() {
    let bytes = archive::compress(&archive::sample_tar(10), Compression::Gzip);
    let (_src, url) = file_url(&bytes, "release.tar.gz");
    let sums = [
        archive::md5_hex(&bytes),
        archive::sha1_hex(&bytes),
        archive::sha256_hex(&bytes),
        archive::sha512_hex(&bytes),
        format!("  {}\n", archive::sha256_hex(&bytes).to_uppercase()),
    ];
    for sum in sums {
        let parent = parent();
        let (result, _) = run(&url, &sum, parent.path(), &opts()).await;
        let staged = result.unwrap_or_else(|e| panic!("checksum {sum}: {e}"));
        assert_eq!(staged.digest_hex, sum.trim().to_lowercase());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_checksum_fails_and_removes_the_staging_dir() {
    let bytes = archive::compress(&archive::sample_tar(50_000), Compression::Gzip);
    let (_src, url) = file_url(&bytes, "release.tar.gz");
    let parent = parent();
    let wrong = archive::sha256_hex(b"something else");
    let (result, _) = run(&url, &wrong, parent.path(), &opts()).await;
    let err = expect_err(result);
    let expected = format!(
        "checksum mismatch for {url}: expected sha256 {wrong}, got {}; the archive or the manifest is wrong",
        archive::sha256_hex(&bytes)
    );
    assert_eq!(err, expected);
    assert!(leftovers(parent.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_entries_are_refused_and_leave_nothing() {
    let refusals = [
        (Hostile::ParentDir, "path escapes the destination"),
        (Hostile::Absolute, "path escapes the destination"),
        (
            Hostile::SymlinkEscape,
            "link target '../../etc' escapes the destination",
        ),
        (
            Hostile::HardlinkEscape,
            "link target '../../etc/passwd' escapes the destination",
        ),
        (
            Hostile::CharDevice,
            "device and fifo entries are not allowed",
        ),
        (Hostile::Fifo, "device and fifo entries are not allowed"),
    ];
    for (kind, why) in refusals {
        let bytes = archive::hostile_tar(kind);
        let (_src, url) = file_url(&bytes, "hostile.tar");
        let parent = parent();
        let (result, _) = run(&url, &archive::sha256_hex(&bytes), parent.path(), &opts()).await;
        let err = expect_err(result);
        let expected = format!("refusing archive entry '{}' of {url}: {why}", kind.entry());
        assert!(err.starts_with(&expected), "{kind:?}: {err}");
        assert!(leftovers(parent.path()).is_empty(), "{kind:?}");
    }
    assert!(!Path::new("/tmp/evil-absolute").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setuid_bits_are_dropped() {
    let bytes = archive::hostile_tar(Hostile::Setuid);
    let (_src, url) = file_url(&bytes, "suid.tar");
    let parent = parent();
    let (result, _) = run(&url, &archive::sha256_hex(&bytes), parent.path(), &opts()).await;
    let staged = result.unwrap();
    assert_eq!(mode(&staged.path().join("suid")), 0o755);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_archives_are_reported_as_such() {
    let tar = archive::sample_tar(200_000);
    let gz = archive::compress(&tar, Compression::Gzip);
    // Cut inside the big file's data, where neither format can pretend it ended cleanly.
    let cases = [
        ("tar", tar[..150_001].to_vec()),
        ("tar.gz", gz[..gz.len() / 2].to_vec()),
    ];
    for (name, bytes) in cases {
        let (_src, url) = file_url(&bytes, name);
        let parent = parent();
        let (result, _) = run(&url, &archive::sha256_hex(&bytes), parent.path(), &opts()).await;
        let err = expect_err(result);
        assert!(
            err.starts_with(&format!("archive {url} is truncated or corrupt: ")),
            "{name}: {err}"
        );
        assert!(leftovers(parent.path()).is_empty(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_format_names_its_first_bytes() {
    let bytes = b"<html><body>Not Found</body></html>\n".to_vec();
    let (_src, url) = file_url(&bytes, "page.html");
    let parent = parent();
    let (result, _) = run(&url, &archive::sha256_hex(&bytes), parent.path(), &opts()).await;
    let err = expect_err(result);
    assert!(
        err.contains("is not a known archive format (first bytes: 3c 68 74 6d 6c"),
        "{err}"
    );
    assert!(leftovers(parent.path()).is_empty());
}
