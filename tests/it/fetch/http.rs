//! HTTP origins: redirects, headers, error statuses, unreachable hosts, resumed and restarted
//! downloads, the overall timeout, the bandwidth cap, and the manifest fetch.

use std::time::{Duration, Instant};

use cutover::agent::log::RunLog;
use cutover::agent::pipeline::Staged;
use cutover::agent::source::{fetch_bytes, FetchOptions};

use super::{assert_sample_tree, expect_err, file_url, leftovers, opts, parent, run};
use crate::support::archive::{self, Compression};
use crate::support::free_port;
use crate::support::http_server::{HttpServer, Mode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_fetch_follows_redirects_and_sends_headers() {
    let server = HttpServer::start();
    let bytes = archive::compress(&archive::sample_tar(10_000), Compression::Zstd);
    server.serve("/new.tar.zst", bytes.clone());
    server.serve_with(
        "/old.tar.zst",
        Vec::new(),
        Mode::Redirect("/new.tar.zst".into()),
        true,
    );
    let parent = parent();
    let opts = FetchOptions {
        headers: vec![("X-Deploy-Token".into(), "t0k3n".into())],
        ..opts()
    };
    let url = server.url("/old.tar.zst");
    let (result, _) = run(&url, &archive::sha256_hex(&bytes), parent.path(), &opts).await;
    assert_sample_tree(result.unwrap().path());
    let heads = server.request_heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads
        .iter()
        .all(|h| h.to_lowercase().contains("x-deploy-token: t0k3n")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_error_statuses_fail_with_the_status_and_are_retried() {
    let server = HttpServer::start();
    server.serve_with("/missing", Vec::new(), Mode::Status(404), true);
    server.serve_with("/broken", Vec::new(), Mode::Status(500), true);
    let sum = archive::sha256_hex(b"");
    let cases = [
        ("/missing", "404 Not Found"),
        ("/broken", "500 Internal Server Error"),
    ];
    for (path, status) in cases {
        let before = server.requests();
        let parent = parent();
        let url = server.url(path);
        let opts = FetchOptions {
            retries: 2,
            ..opts()
        };
        let (result, log) = run(&url, &sum, parent.path(), &opts).await;
        let err = expect_err(result);
        assert_eq!(
            err,
            format!("HTTP {status} fetching {url}; check that the URL is right and the file is published")
        );
        assert_eq!(server.requests() - before, 3, "one attempt and two retries");
        assert!(
            log.contents().contains("(attempt 3 of 3)"),
            "{}",
            log.contents()
        );
        assert!(leftovers(parent.path()).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_host_fails_with_a_connect_error() {
    // A port that was free a moment ago: nothing listens there.
    let url = format!("http://127.0.0.1:{}/release.tar.gz", free_port());
    let parent = parent();
    let (result, _) = run(&url, &archive::sha256_hex(b""), parent.path(), &opts()).await;
    let err = expect_err(result);
    assert!(
        err.starts_with(&format!("could not connect for {url}")),
        "{err}"
    );
    assert!(
        err.ends_with("check the host name, the network and proxy settings"),
        "{err}"
    );
    assert!(leftovers(parent.path()).is_empty());
}

/// A server whose first download of a 300 KB tar.gz (`/r.tar.gz`) is cut after 100 KB, with
/// Range support on or off; the server and the archive.
fn cut_once(ranges: bool) -> (HttpServer, Vec<u8>) {
    let server = HttpServer::start();
    let bytes = archive::compress(&archive::sample_tar(300_000), Compression::Gzip);
    server.serve_with("/r.tar.gz", bytes.clone(), Mode::CutOnce(100_000), ranges);
    (server, bytes)
}

/// The download of [`cut_once`], allowed one retry, which must succeed with the whole sample
/// tree: what was staged, the run's log and the staging parent.
async fn fetch_cut_once(server: &HttpServer, bytes: &[u8]) -> (Staged, RunLog, tempfile::TempDir) {
    let parent = parent();
    let opts = FetchOptions {
        retries: 1,
        ..opts()
    };
    let url = server.url("/r.tar.gz");
    let (result, log) = run(&url, &archive::sha256_hex(bytes), parent.path(), &opts).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{}", log.contents()));
    assert_sample_tree(staged.path());
    (staged, log, parent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_resumes_with_a_range_request() {
    let (server, bytes) = cut_once(true);
    let (staged, log, parent) = fetch_cut_once(&server, &bytes).await;
    let heads = server.request_heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(
        heads[1].to_lowercase().contains("range: bytes=100000-"),
        "{heads:?}"
    );
    assert!(log.contents().contains("resuming"), "{}", log.contents());
    assert_eq!(leftovers(parent.path()), vec![staged.path().to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_starts_over_when_ranges_are_not_supported() {
    let (server, bytes) = cut_once(false);
    let (staged, log, parent) = fetch_cut_once(&server, &bytes).await;
    assert_eq!(staged.bytes, bytes.len() as u64);
    assert!(
        log.contents().contains("starting over"),
        "{}",
        log.contents()
    );
    // The abandoned first staging directory is gone; only the finished one remains.
    assert_eq!(leftovers(parent.path()), vec![staged.path().to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_without_retries_fails_cleanly() {
    let (server, bytes) = cut_once(true);
    let parent = parent();
    let url = server.url("/r.tar.gz");
    let (result, _) = run(&url, &archive::sha256_hex(&bytes), parent.path(), &opts()).await;
    let err = expect_err(result);
    assert!(
        err.starts_with(&format!("connection broken after 100000 bytes of {url}")),
        "{err}"
    );
    assert!(leftovers(parent.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_bounds_the_whole_fetch() {
    let server = HttpServer::start();
    server.serve_with("/slow.tar", vec![0; 10_000], Mode::Stall, true);
    let parent = parent();
    let opts = FetchOptions {
        timeout: Some(Duration::from_secs(1)),
        retries: 5,
        ..opts()
    };
    let url = server.url("/slow.tar");
    let started = Instant::now();
    let (result, _) = run(&url, &archive::sha256_hex(b""), parent.path(), &opts).await;
    let err = expect_err(result);
    assert_eq!(
        err,
        format!("timed out after 1s fetching {url}; raise --timeout or check the network")
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(leftovers(parent.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_cap_limits_throughput() {
    let server = HttpServer::start();
    // Random data does not compress: the tar is ~200 KB on the wire.
    let bytes = archive::sample_tar(200_000);
    server.serve("/big.tar", bytes.clone());
    let parent = parent();
    let opts = FetchOptions {
        max_bandwidth: Some(100_000),
        ..opts()
    };
    let started = Instant::now();
    let (result, _) = run(
        &server.url("/big.tar"),
        &archive::sha256_hex(&bytes),
        parent.path(),
        &opts,
    )
    .await;
    result.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_500),
        "200 KB at 100 KB/s took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_bytes_reads_files_and_http_and_refuses_errors() {
    let server = HttpServer::start();
    server.serve("/m.yml", b"src: x\n".to_vec());
    server.serve("/huge.yml", vec![b'#'; 5 << 20]);
    let (_dir, file) = file_url(b"dest: /srv\n", "m.yml");
    let log = RunLog::quiet(1 << 20);
    assert_eq!(
        fetch_bytes(&file, &opts(), &log).await.unwrap(),
        b"dest: /srv\n"
    );
    let plain_path = file.trim_start_matches("file://");
    assert_eq!(
        fetch_bytes(plain_path, &opts(), &log).await.unwrap(),
        b"dest: /srv\n"
    );
    assert_eq!(
        fetch_bytes(&server.url("/m.yml"), &opts(), &log)
            .await
            .unwrap(),
        b"src: x\n"
    );

    let missing = server.url("/nope.yml");
    let err = fetch_bytes(&missing, &opts(), &log)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("HTTP 404 Not Found fetching {missing}")),
        "{err}"
    );
    let err = fetch_bytes(&server.url("/huge.yml"), &opts(), &log)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("too large for a manifest"), "{err}");
    let err = fetch_bytes("/does/not/exist.yml", &opts(), &log)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("could not read /does/not/exist.yml"),
        "{err}"
    );
    let err = fetch_bytes("ftp://host/m.yml", &opts(), &log)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("unsupported URL scheme 'ftp'"), "{err}");
}
