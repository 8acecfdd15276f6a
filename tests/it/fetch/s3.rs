//! S3 origins on a real `moto_server`: through the library with explicit settings, and through
//! the real binary with the endpoint and credentials in the child's environment only.

use std::path::Path;

use cutover::agent::source::{fetch_bytes, FetchOptions};

use super::{assert_sample_tree, expect_err, leftovers, mode, opts, parent, run};
use crate::support::archive::{self, Compression};
use crate::support::s3::Moto;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_objects_are_fetched_and_unpacked() {
    let moto = Moto::start();
    let bytes = archive::compress(&archive::sample_tar(50_000), Compression::Xz);
    moto.put("releases", "shop/1.0.tar.xz", bytes.clone()).await;
    moto.put(
        "releases",
        "shop/manifest.yml",
        b"src: s3://releases/shop/1.0.tar.xz\n".to_vec(),
    )
    .await;
    let opts = FetchOptions {
        s3: Some(moto.settings()),
        ..opts()
    };
    let parent = parent();
    let url = "s3://releases/shop/1.0.tar.xz";
    let (result, log) = run(url, &archive::sha256_hex(&bytes), parent.path(), &opts).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{}", log.contents()));
    assert_sample_tree(staged.path());
    let manifest = fetch_bytes("s3://releases/shop/manifest.yml", &opts, &log)
        .await
        .unwrap();
    assert_eq!(manifest, b"src: s3://releases/shop/1.0.tar.xz\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_keys_and_buckets_are_named() {
    let moto = Moto::start();
    moto.put("releases", "present.tar", archive::sample_tar(10))
        .await;
    let opts = FetchOptions {
        s3: Some(moto.settings()),
        ..opts()
    };
    let sum = archive::sha256_hex(b"");
    let parent = parent();
    let (result, _) = run("s3://releases/absent.tar", &sum, parent.path(), &opts).await;
    let err = expect_err(result);
    assert!(
        err.starts_with("S3 object s3://releases/absent.tar does not exist (NoSuchKey)"),
        "{err}"
    );
    let (result, _) = run("s3://no-such-bucket/a.tar", &sum, parent.path(), &opts).await;
    let err = expect_err(result);
    assert!(
        err.starts_with("S3 bucket 'no-such-bucket' of s3://no-such-bucket/a.tar does not exist"),
        "{err}"
    );
    assert!(leftovers(parent.path()).is_empty());
}

/// The real binary against a real S3 server: manifest and archive both on S3, placed with `mv`.
/// The endpoint and credentials reach the child through its environment only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_apply_deploys_from_s3_and_names_a_missing_key() {
    let moto = Moto::start();
    let site = tempfile::tempdir().expect("temp dir");
    let dest = site.path().join("dest");
    let bytes = archive::compress(&archive::sample_tar(20_000), Compression::Gzip);
    moto.put("releases", "shop/1.0.tar.gz", bytes.clone()).await;
    let manifest = format!(
        "src: s3://releases/shop/1.0.tar.gz\nchecksum: {}\ndest: {}\nsync_strategy: mv\n",
        archive::sha256_hex(&bytes),
        dest.display()
    );
    moto.put("releases", "shop/manifest.yml", manifest.into_bytes())
        .await;
    let broken = format!(
        "src: s3://releases/shop/absent.tar.gz\nchecksum: {}\ndest: {}\nsync_strategy: mv\n",
        archive::sha256_hex(&bytes),
        site.path().join("other").display()
    );
    moto.put("releases", "shop/broken.yml", broken.into_bytes())
        .await;

    let apply = |manifest_url: &str| {
        let mut cmd = crate::support::cutover();
        cmd.arg("apply")
            .arg(manifest_url)
            .current_dir(site.path())
            .env("CUTOVER_STATE_DIR", site.path().join("state"))
            .env("CUTOVER_SOCKET", site.path().join("state/none.sock"))
            .env("HOME", site.path())
            .envs(moto.env());
        cmd.output().expect("run cutover apply")
    };
    let out = apply("s3://releases/shop/manifest.yml");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_sample_tree_files(&dest);

    let out = apply("s3://releases/shop/broken.yml");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("S3 object s3://releases/shop/absent.tar.gz does not exist (NoSuchKey)"),
        "{stderr}"
    );
    assert!(
        !site.path().join("other").exists(),
        "a failed fetch creates no dest"
    );
}

/// The sample files arrived (modes and the root's mode are the agent's business here).
fn assert_sample_tree_files(root: &Path) {
    let app = root.join("app");
    assert_eq!(
        std::fs::read_to_string(app.join("hello.txt")).unwrap(),
        "hello from the archive\n"
    );
    assert_eq!(mode(&app.join("bin/run")), 0o755);
    assert_eq!(
        std::fs::read_link(app.join("current.txt")).unwrap(),
        Path::new("hello.txt")
    );
}
