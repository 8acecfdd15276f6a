//! Hooks: commands-only mode, the order pre → place → post → success/failure, the log on the
//! stdin of success/failure commands, commands that ignore stdin, quoting, and the directory.

use super::{read, Entry, Site};

#[test]
fn commands_only_success_runs_pre_post_success_in_order() {
    let site = Site::new();
    let url = site.manifest(
        "m.yml",
        "commands:\n  pre:\n    - echo pre >> order\n  post:\n    - echo post >> order\n  success:\n    - echo success >> order\n    - cat > success-stdin\n  failure:\n    - echo failure >> order\n",
    );
    site.run(&url, &[])
        .expect_code(0)
        .expect_stderr("commands-only mode");
    assert_eq!(read(&site.path("cwd/order")), "pre\npost\nsuccess\n");
    let stdin = read(&site.path("cwd/success-stdin"));
    assert!(
        stdin
            .trim_end()
            .ends_with(&format!("Deploy manifest succeeded: {url}")),
        "success stdin ends with the final line:\n{stdin}"
    );
    assert!(
        stdin.contains("running pre command: echo pre >> order"),
        "{stdin}"
    );
}

#[test]
fn commands_only_failure_stops_at_the_failing_command_and_runs_failure() {
    let site = Site::new();
    let url = site.manifest(
        "m.yml",
        "commands:\n  pre:\n    - echo pre >> order\n    - echo oops >&2; exit 7\n    - echo never >> order\n  post:\n    - echo post >> order\n  failure:\n    - cat > failure-stdin\n    - echo failure >> order\n",
    );
    site.run(&url, &[])
        .expect_code(1)
        .expect_stderr("pre command `echo oops >&2; exit 7` failed (exit status: 7)");
    assert_eq!(read(&site.path("cwd/order")), "pre\nfailure\n");
    let stdin = read(&site.path("cwd/failure-stdin"));
    assert!(
        stdin.contains("oops"),
        "hook output is in the log:\n{stdin}"
    );
    assert!(
        stdin.trim_end().ends_with("(exit status: 7)")
            && stdin.contains(&format!("Deploy manifest failed: {url}: pre command")),
        "{stdin}"
    );
}

#[test]
fn hooks_that_do_not_read_a_large_log_are_not_an_error() {
    let site = Site::new();
    // The pre hook writes ~1 MB into the log; `true` ignores it all, then `cat` still gets it.
    let url = site.manifest(
        "m.yml",
        "commands:\n  pre:\n    - \"head -c 1000000 /dev/zero | tr '\\\\0' x; echo\"\n  success:\n    - \"true\"\n    - exit 0\n    - wc -c > size\n",
    );
    let run = site.run(&url, &[]);
    run.expect_code(0);
    let size: usize = read(&site.path("cwd/size"))
        .trim()
        .parse()
        .expect("wc output");
    assert!(
        size > 1_000_000,
        "the whole log reached the last command ({size} bytes)"
    );
    let stderr = run.stderr();
    let tail = &stderr[stderr.len().saturating_sub(500)..];
    assert!(!tail.contains("failed"), "no hook failed:\n{tail}");
}

#[test]
fn a_failing_success_command_does_not_change_the_exit_code() {
    let site = Site::new();
    let url = site.manifest(
        "m.yml",
        "commands:\n  success:\n    - exit 3\n    - touch never\n",
    );
    site.run(&url, &[]).expect_code(0).expect_stderr(
        "success command `exit 3` failed (exit status: 3): the deploy's result stands",
    );
    assert!(!site.path("cwd/never").exists());
}

#[test]
fn quoted_colons_are_fine_and_unquoted_ones_are_a_yaml_error() {
    let site = Site::new();
    let quoted = site.manifest(
        "q.yml",
        "commands:\n  pre:\n    - \"echo ':foo: bar' > out\"\n",
    );
    site.run(&quoted, &[]).expect_code(0);
    assert_eq!(read(&site.path("cwd/out")), ":foo: bar\n");

    let unquoted = site.manifest(
        "u.yml",
        "commands:\n  pre:\n    - echo \":foo: bar\" > out2\n  failure:\n    - touch failure-ran\n",
    );
    site.run(&unquoted, &[])
        .expect_code(1)
        .expect_stderr("manifest is not valid YAML")
        .expect_stderr("line 3");
    assert!(!site.path("cwd/out2").exists());
    assert!(
        !site.path("cwd/failure-ran").exists(),
        "manifest errors run no hooks"
    );
}

#[test]
fn pre_runs_after_verify_and_before_placing_post_after() {
    let site = Site::new();
    let url = site.deploy_manifest(
        "commands:\n  pre:\n    - test ! -e @DEST@/index.html && echo pre-saw-nothing >> order\n  post:\n    - test -e @DEST@/index.html && echo post-saw-file >> order\n",
        &[Entry::File("index.html", b"hi")],
    );
    site.run(&url, &[]).expect_code(0);
    assert_eq!(
        read(&site.path("cwd/order")),
        "pre-saw-nothing\npost-saw-file\n"
    );
}

#[test]
fn hooks_run_in_the_start_directory_even_on_failure() {
    let site = Site::new();
    let url = site.deploy_manifest(
        "sync_strategy: mv\ncommands:\n  pre:\n    - pwd > pre-dir\n  failure:\n    - pwd > failure-dir\n",
        &[Entry::File("index.html", b"hi")],
    );
    std::fs::create_dir(site.dest()).expect("dest");
    std::fs::write(site.dest().join("x"), "non-empty").expect("x");
    site.run(&url, &[]).expect_code(1);
    let cwd = site.path("cwd").canonicalize().expect("cwd");
    assert_eq!(
        read(&site.path("cwd/pre-dir")).trim(),
        cwd.to_str().expect("utf-8")
    );
    assert_eq!(
        read(&site.path("cwd/failure-dir")).trim(),
        cwd.to_str().expect("utf-8")
    );
}

#[test]
fn manifest_templates_read_the_environment() {
    let site = Site::new();
    let url = site.manifest(
        "m.yml",
        "commands:\n  pre:\n    - echo {{ env \"CUTOVER_T_UNSET\" \"fallback\" }} {{ must_env \"CUTOVER_T_NAME\" }} > out\n",
    );
    let mut cmd = site.agent();
    cmd.env("CUTOVER_T_NAME", "web1")
        .env_remove("CUTOVER_T_UNSET");
    site.run_with(&mut cmd, &url).expect_code(0);
    assert_eq!(read(&site.path("cwd/out")), "fallback web1\n");
}
