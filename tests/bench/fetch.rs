//! Benchmark: fetch → verify → unpack of a ~200 MB tar.gz, cutover beside curl+sha256sum+tar.
//!
//! Run with `cargo bench --bench fetch`. The archive (mixed text and random files) is generated
//! once and cached under the target directory; a small threaded HTTP server in this process
//! serves it on 127.0.0.1. Each contender runs as a child process so that its wall time and peak
//! RSS (from `wait4`) are measured the same way:
//!
//! - (a) cutover's `fetch_and_unpack`, driven by this very program re-executed as a child
//!   (`CUTOVER_BENCH_CHILD` set), so the measurement holds only the library pipeline;
//! - (a2) the real `cutover apply` of a manifest with `sync_strategy: mv` into a fresh dest (the
//!   tree flushed to disk with one syncfs before the rename, the parent fsynced after it);
//! - (a3) the same without the flush (the hidden `--unsafe-no-fsync`), so (a2) − (a3) is what the
//!   durability costs;
//! - (b) `curl -o f && sha256sum f && tar xzf f`, the download-then-verify-then-unpack way;
//! - (c) `curl | tee >(sha256sum) | tar xz`, the best a shell pipeline does.
//!
//! Peak RSS is the largest single process of a contender (what `wait4` reports), not a sum.
//! `BENCH_ROUNDS=N` sets the runs per contender (best of N; 3 by default).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use digest::Digest;

const CHILD_ENV: &str = "CUTOVER_BENCH_CHILD";
/// Runs per contender unless `BENCH_ROUNDS` says otherwise.
const RUNS: usize = 3;

/// Builds a contender's command for a fresh destination directory.
type CommandFor<'a> = Box<dyn Fn(&Path) -> Command + 'a>;

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    let work = bench_dir();
    let archive = work.join("release.tar.gz");
    if !archive.exists() {
        eprintln!("generating {} (once)", archive.display());
        generate(&archive);
    }
    let bytes = std::fs::metadata(&archive).expect("archive").len();
    let sum = sha256_file(&archive);
    let url = serve(archive.clone());
    eprintln!("archive: {:.1} MB, served at {url}", bytes as f64 / 1e6);

    let exe = std::env::current_exe().expect("own path");
    let contenders: Vec<(&str, CommandFor)> = vec![
        (
            "(a) cutover fetch_and_unpack",
            Box::new(|dest: &Path| {
                let mut cmd = Command::new(&exe);
                cmd.env(CHILD_ENV, format!("{url}\n{sum}\n{}", dest.display()));
                cmd
            }),
        ),
        (
            "(a2) cutover apply (real binary, mv)",
            Box::new(|dest: &Path| apply_mv(dest, &url, &sum, &[])),
        ),
        (
            "(a3) (a2) with --unsafe-no-fsync",
            Box::new(|dest: &Path| apply_mv(dest, &url, &sum, &["--unsafe-no-fsync"])),
        ),
        (
            "(b) curl -o; sha256sum; tar xzf",
            Box::new(|dest: &Path| {
                shell(
                    dest,
                    &format!("curl -s -o ../dl.tar.gz {url} && sha256sum ../dl.tar.gz >/dev/null && tar xzf ../dl.tar.gz && rm ../dl.tar.gz"),
                )
            }),
        ),
        (
            "(c) curl | tee >(sha256sum) | tar xz",
            Box::new(|dest: &Path| {
                shell(
                    dest,
                    &format!("curl -s {url} | tee >(sha256sum >&2) | tar xz"),
                )
            }),
        ),
    ];

    let runs = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(RUNS);
    let mut results = Vec::new();
    for (name, make) in &contenders {
        let mut best: Option<(Duration, u64)> = None;
        for _ in 0..runs {
            // Each run starts with nothing dirty on the disk, so one contender's writeback does
            // not land in the next one's flush.
            sync_all();
            let dest = work.join("dest");
            let _ = std::fs::remove_dir_all(&dest);
            std::fs::create_dir_all(&dest).expect("dest");
            let (took, rss_kb) = measure(make(&dest));
            std::fs::remove_dir_all(&dest).expect("clean dest");
            best = Some(match best {
                Some((t, r)) if t <= took => (t, r.max(rss_kb)),
                Some((_, r)) => (took, r.max(rss_kb)),
                None => (took, rss_kb),
            });
        }
        let (took, rss_kb) = best.expect("at least one run");
        results.push((*name, took, rss_kb));
    }

    // (c), the best shell pipeline, is the baseline.
    let baseline = results[results.len() - 1].1.as_secs_f64();
    println!(
        "\nfetch → verify → unpack of {:.0} MB tar.gz over HTTP on 127.0.0.1 (best of {runs})",
        bytes as f64 / 1e6
    );
    println!(
        "{:<40} {:>8} {:>12} {:>10}",
        "contender", "wall s", "peak RSS MB", "vs (c)"
    );
    for (name, took, rss_kb) in &results {
        println!(
            "{name:<40} {:>8.2} {:>12.1} {:>9.2}x",
            took.as_secs_f64(),
            *rss_kb as f64 / 1024.0,
            took.as_secs_f64() / baseline
        );
    }
}

/// The pipeline under test, in a child process of its own.
fn child(spec: &str) {
    let mut parts = spec.lines();
    let (Some(url), Some(sum), Some(dest)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("{CHILD_ENV} must hold URL, checksum and dest on three lines");
    };
    let checksum = sum.parse().expect("checksum");
    let log = cutover::agent::log::RunLog::quiet(1 << 20);
    let opts = cutover::agent::source::FetchOptions::default();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let staged = runtime
        .block_on(cutover::agent::pipeline::fetch_and_unpack(
            url,
            &checksum,
            (Path::new(dest), cutover::agent::pipeline::STAGING_PREFIX),
            &opts,
            &cutover::agent::limits::Limits::default(),
            &log,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    // Keep the tree, as the agent would before placing it.
    let _ = staged.dir.keep();
}

/// The whole agent: manifest fetch, pipeline, `mv` into a fresh dest, with `extra` flags.
fn apply_mv(dest: &Path, url: &str, sum: &str, extra: &[&str]) -> Command {
    let manifest = dest.join("manifest.yml");
    let yaml = format!(
        "src: {url}\nchecksum: {sum}\ndest: {}\nsync_strategy: mv\n",
        dest.join("app").display()
    );
    std::fs::write(&manifest, yaml).expect("write manifest");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.arg("apply")
        .arg(&manifest)
        .args(extra)
        .current_dir(dest)
        .env("CUTOVER_STATE_DIR", dest.join("state"))
        .stderr(std::process::Stdio::null());
    cmd
}

/// sync(2): writes out everything dirty, on every filesystem.
fn sync_all() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn shell(dest: &Path, script: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script]).current_dir(dest);
    cmd
}

/// Wall time and peak RSS (KB) of one child run.
fn measure(mut cmd: Command) -> (Duration, u64) {
    let started = Instant::now();
    let child = cmd.spawn().expect("spawn contender");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value, and wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own un-waited child; `status` and `usage` are valid for writes.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let took = started.elapsed();
    assert_eq!(rc, pid, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "contender failed with status {status}"
    );
    // The child was reaped by wait4; std must not try to wait for it again.
    std::mem::forget(child);
    (took, usage.ru_maxrss as u64)
}

fn bench_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("bench-fetch");
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

/// ~200 MB of tar.gz: 160 one-megabyte random files (incompressible) and 12,000 text files.
fn generate(path: &Path) {
    let tmp = path.with_extension("partial");
    let file = std::fs::File::create(&tmp).expect("create archive");
    let gz =
        flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut state = 0x1234_5678_9abc_def1u64;
    let mut random = |len: usize| {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        }
        out
    };
    let add = |tar: &mut tar::Builder<_>, name: String, body: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, body).expect("append");
    };
    for i in 0..160 {
        add(&mut tar, format!("app/blobs/{i:03}.bin"), &random(1 << 20));
    }
    for i in 0..12_000 {
        let text = format!("line {i} of a source file with some words in it\n").repeat(100);
        add(
            &mut tar,
            format!("app/src/{:02}/{i:05}.txt", i % 100),
            text.as_bytes(),
        );
    }
    let gz = tar.into_inner().expect("finish tar");
    let mut out = gz.finish().expect("finish gzip");
    out.flush().expect("flush archive");
    std::fs::rename(&tmp, path).expect("rename archive");
}

fn sha256_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).expect("open archive");
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).expect("hash archive");
    hex::encode(hasher.finalize())
}

/// Serves `path` at `/release.tar.gz` from a thread per connection; returns the URL.
fn serve(path: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let path = path.clone();
            std::thread::spawn(move || {
                let _ = answer(conn, &path);
            });
        }
    });
    format!("http://{addr}/release.tar.gz")
}

fn answer(conn: TcpStream, path: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 && line != "\r\n" {
        line.clear();
    }
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    // std::io::copy uses sendfile for file → socket, so the server costs little CPU.
    std::io::copy(&mut file, &mut conn)?;
    Ok(())
}
