//! What a crash or a power cut leaves: files are flushed to disk before they go live (the log
//! says so, for `mv` and rsync), and the staging directory of an agent killed mid-download is
//! swept by the next deploy to the same dest, while another dest's is left alone.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cutover::agent::leftovers::staging_prefix;

use super::{sha256_hex, tar_gz, Entry, Site};
use crate::support::http_server::{HttpServer, Mode};
use crate::support::wait_until;

const APP: &[Entry] = &[Entry::File("index.html", b"v2\n")];

/// Entries of `dir` whose names start with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

#[test]
fn a_killed_agents_staging_is_swept_by_the_next_deploy_to_its_dest() {
    let site = Site::new();
    let archive = tar_gz(None, APP);
    let server = HttpServer::start();
    // The first download never ends: the agent is killed in the middle of it.
    server.serve_with("/app.tar.gz", archive.clone(), Mode::Stall, false);
    let url = site.manifest(
        "manifest.yml",
        &format!(
            "src: {}\nchecksum: {}\ndest: @DEST@\n",
            server.url("/app.tar.gz"),
            sha256_hex(&archive)
        ),
    );
    // A staging directory of another dest beside this one: its agent may be alive.
    let other = site.path(&format!("{}live", staging_prefix(&site.path("other"))));
    std::fs::create_dir(&other).expect("another dest's staging");

    let parent = site.path("");
    let ours = staging_prefix(&site.dest());
    std::fs::write(site.path("stdin"), &url).expect("stdin file");
    let mut agent = site
        .agent()
        .stdin(File::open(site.path("stdin")).expect("stdin file"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cutover");
    wait_until(
        "the agent to stage the download",
        Duration::from_secs(30),
        || !named(&parent, &ours).is_empty(),
    );
    agent.kill().expect("SIGKILL the agent");
    agent.wait().expect("reap the agent");
    let leftover = named(&parent, &ours);
    assert_eq!(
        leftover.len(),
        1,
        "one staging directory left: {leftover:?}"
    );

    server.serve("/app.tar.gz", archive);
    let run = site.run(&url, &[]);
    run.expect_code(0)
        .expect_stderr(&format!("removed {}", leftover[0].display()))
        .expect_stderr("an earlier deploy to this dest that did not finish");
    assert!(!leftover[0].exists(), "the leftover is gone");
    assert!(
        named(&parent, &ours).is_empty(),
        "{:?}",
        named(&parent, &ours)
    );
    assert!(other.is_dir(), "another dest's staging is left alone");
    assert_eq!(
        std::fs::read_to_string(site.dest().join("index.html")).unwrap(),
        "v2\n"
    );
}

#[test]
fn files_are_flushed_to_disk_before_they_go_live() {
    // mv: the staged tree, before the rename.
    let site = Site::new();
    let url = site.deploy_manifest("sync_strategy: mv\n", APP);
    let run = site.run(&url, &[]);
    run.expect_code(0);
    let staged = site
        .dest()
        .parent()
        .expect("a parent")
        .join(staging_prefix(&site.dest()));
    let stderr = run.stderr();
    let flushed = stderr
        .find(&format!("flushed {}", staged.display()))
        .unwrap_or_else(|| panic!("the staged tree is flushed:\n{stderr}"));
    let renamed = stderr
        .find(&format!("mv {}", staged.display()))
        .unwrap_or_else(|| panic!("the rename is logged:\n{stderr}"));
    assert!(flushed < renamed, "flushed before the rename:\n{stderr}");

    // rsync: dest, after rsync wrote it.
    let site = Site::new();
    let url = site.deploy_manifest("", APP);
    site.run(&url, &[])
        .expect_code(0)
        .expect_stderr(&format!("flushed {} to disk", site.dest().display()));

    // The bench's escape hatch says what it skips.
    let site = Site::new();
    let url = site.deploy_manifest("", APP);
    site.run(&url, &["--unsafe-no-fsync"])
        .expect_code(0)
        .expect_stderr("not flushing");
}
