//! Inputs: plain lines, `consul watch` event arrays, Serf user events, replay protection and the
//! exit code under Consul.

use base64::Engine;

use super::{read, Entry, Site};
use crate::support;

/// A Consul watch array from fixtures/agent/consul-two-events.json whose newest event carries `url`.
pub(super) fn consul_events(url: &str) -> String {
    let payload = base64::engine::general_purpose::STANDARD.encode(url);
    read(&support::fixture("agent/consul-two-events.json")).replace("@PAYLOAD@", &payload)
}

fn counting_manifest(site: &Site) -> String {
    site.manifest("m.yml", "commands:\n  post:\n    - echo run >> runs\n")
}

fn runs(site: &Site) -> usize {
    std::fs::read_to_string(site.path("cwd/runs"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_plain_line_with_spaces_and_crlf_is_trimmed() {
    let site = Site::new();
    let url = site.deploy_manifest("", &[Entry::File("a", b"1")]);
    site.run(&format!("  {url} \r\n"), &[]).expect_code(0);
    assert_eq!(read(&site.dest().join("a")), "1");
}

#[test]
fn consul_takes_the_last_event_and_skips_it_when_replayed() {
    let site = Site::new();
    let url = counting_manifest(&site);
    let events = consul_events(&url);
    let mut cmd = site.agent();
    cmd.env("CONSUL_INDEX", "42");
    site.run_with(&mut cmd, &events)
        .expect_code(0)
        .expect_stderr(&format!("Deploy manifest succeeded: {url}"));
    assert_eq!(runs(&site), 1);

    // A restarted watch hands the same buffer over again: skipped, saying so.
    let mut cmd = site.agent();
    cmd.env("CONSUL_INDEX", "43");
    site.run_with(&mut cmd, &events)
        .expect_code(0)
        .expect_stderr("already handled");
    assert_eq!(runs(&site), 1);

    // The off-switch deploys it again.
    let mut cmd = site.agent();
    cmd.env("CONSUL_INDEX", "44").arg("--allow-replays");
    site.run_with(&mut cmd, &events).expect_code(0);
    assert_eq!(runs(&site), 2);
}

#[test]
fn consul_json_is_recognised_by_its_first_byte() {
    let site = Site::new();
    let url = counting_manifest(&site);
    site.run(&consul_events(&url), &[]).expect_code(0);
    assert_eq!(runs(&site), 1);
}

#[test]
fn consul_errors_exit_0_under_a_watch_and_1_otherwise() {
    let site = Site::new();
    for (fixture, message) in [
        ("consul-empty.json", "no Consul events found"),
        ("consul-null-payload.json", "has no payload"),
        ("consul-bad-base64.json", "Payload is not base64"),
    ] {
        let events = read(&support::fixture(&format!("agent/{fixture}")));
        let mut cmd = site.agent();
        cmd.env("CONSUL_INDEX", "1");
        site.run_with(&mut cmd, &events)
            .expect_code(0)
            .expect_stderr(message);
        site.run(&events, &[]).expect_code(1).expect_stderr(message);
    }
}

#[test]
fn under_consul_a_failed_deploy_and_a_bad_flag_exit_0() {
    let site = Site::new();
    let url = site.manifest("m.yml", "commands:\n  pre:\n    - exit 1\n");
    let mut cmd = site.agent();
    cmd.env("CONSUL_INDEX", "5");
    site.run_with(&mut cmd, &consul_events(&url))
        .expect_code(0)
        .expect_stderr("Deploy manifest failed");

    let mut cmd = site.agent();
    cmd.env("CONSUL_INDEX", "5").arg("--no-such-flag");
    site.run_with(&mut cmd, "").expect_code(0);
    site.run("", &["--no-such-flag"]).expect_code(1);
}

#[test]
fn serf_user_events_deploy_once_per_ltime() {
    let site = Site::new();
    let url = counting_manifest(&site);
    let serf = |ltime: &str| {
        let mut cmd = site.agent();
        cmd.env("SERF_EVENT", "user")
            .env("SERF_USER_EVENT", "deploy")
            .env("SERF_USER_LTIME", ltime)
            .env("SERF_SELF_NAME", "node1");
        cmd
    };
    // Serf appends a newline to the payload.
    site.run_with(&mut serf("7"), &format!("{url}\n"))
        .expect_code(0);
    site.run_with(&mut serf("7"), &format!("{url}\n"))
        .expect_code(0)
        .expect_stderr("skipping serf event \"deploy\" (LTime 7): already handled");
    site.run_with(&mut serf("6"), &format!("{url}\n"))
        .expect_code(0)
        .expect_stderr("already handled");
    site.run_with(&mut serf("8"), &format!("{url}\n"))
        .expect_code(0);
    assert_eq!(runs(&site), 2);
}

#[test]
fn a_failed_deploy_is_recorded_and_not_retried_by_a_replay() {
    let site = Site::new();
    let url = site.manifest(
        "m.yml",
        "commands:\n  pre:\n    - echo try >> tries; exit 1\n",
    );
    let events = consul_events(&url);
    site.run(&events, &[]).expect_code(1);
    site.run(&events, &[])
        .expect_code(0)
        .expect_stderr("already handled");
    assert_eq!(read(&site.path("cwd/tries")), "try\n");
}

#[test]
fn plain_input_is_never_skipped() {
    let site = Site::new();
    let url = counting_manifest(&site);
    site.run(&url, &[]).expect_code(0);
    site.run(&url, &[]).expect_code(0);
    assert_eq!(runs(&site), 2);
}

#[test]
fn serf_membership_events_are_ignored() {
    let site = Site::new();
    let mut cmd = site.agent();
    cmd.env("SERF_EVENT", "member-join");
    site.run_with(&mut cmd, "node2 10.0.0.2\n")
        .expect_code(0)
        .expect_stderr("ignoring serf member-join event");
}

#[test]
fn empty_stdin_is_an_error() {
    let site = Site::new();
    site.run("", &[])
        .expect_code(1)
        .expect_stderr("could not parse event: stdin is empty");
}

#[test]
fn both_flag_generations_parse_and_version_prints() {
    let site = Site::new();
    let url = counting_manifest(&site);
    let v1 = [
        "-max-bandwidth",
        "1M",
        "-timeout",
        "10",
        "-retry",
        "3",
        "-retry-wait",
        "3",
        "-random-delay",
        "0.01",
        "-rsync-verbose",
        "-v",
    ];
    site.run(&url, &v1).expect_code(0);
    let v2 = [
        "--max-band-width=1MiB",
        "--timeout=10s",
        "--retry=3",
        "--retry-wait=3s",
        "--random-delay=0.01s",
        "--rsync-verbose=-v",
        "--http-header",
        "X-Token=abc",
    ];
    site.run(&url, &v2).expect_code(0);
    assert_eq!(runs(&site), 2);
    let version = format!("cutover {}\n", env!("CARGO_PKG_VERSION"));
    for flag in ["-v", "-version", "--version"] {
        let run = site.run("", &[flag]);
        run.expect_code(0);
        assert_eq!(run.stdout(), version);
    }
    site.run("", &["--timeout=soon"])
        .expect_code(1)
        .expect_stderr("is not a duration");
}

#[test]
fn apply_deploys_a_local_path_without_stdin() {
    let site = Site::new();
    let _ = site.deploy_manifest("", &[Entry::File("a", b"applied")]);
    site.run("", &["apply", "../manifest.yml"]).expect_code(0);
    assert_eq!(read(&site.dest().join("a")), "applied");
    site.run("", &["apply", "../nope.yml"])
        .expect_code(1)
        .expect_stderr("not found");
}
