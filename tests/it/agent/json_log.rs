//! `cutover --log-format json apply`: the agent's lines on stderr, and its commands' output
//! there, are JSON objects; the log the hooks get on stdin stays stretcher's plain text.

use super::{read, Entry, Site};
use crate::support::json_lines;

#[test]
fn a_checksum_mismatch_is_a_json_error_line_and_hooks_still_get_text() {
    let site = Site::new();
    let (src, _) = site.archive("a.tar.gz", None, &[Entry::File("index.html", b"v2")]);
    let wrong = "0".repeat(64);
    let url = site.manifest(
        "m.yml",
        &format!(
            "src: {src}\nchecksum: {wrong}\ndest: @DEST@\ncommands:\n  failure:\n    - echo the failure hook ran >&2\n    - cat > failure-stdin\n"
        ),
    );
    let mut command = site.agent();
    command.args(["--log-format", "json", "apply", url.as_str()]);
    let run = site.run_with(&mut command, "");
    run.expect_code(1);

    let stderr = run.stderr();
    let lines = json_lines(&stderr);
    let errors: Vec<_> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let message = errors[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!("Deploy manifest failed: {url}: checksum mismatch")),
        "{message}"
    );
    assert_eq!(errors[0]["target"], "cutover::agent");
    // The failure hook's stderr came through the log too, naming the command.
    let hook = lines
        .iter()
        .find(|l| l["message"] == "the failure hook ran")
        .unwrap_or_else(|| panic!("no line of the failure hook in:\n{stderr}"));
    assert!(
        hook["command"]
            .as_str()
            .is_some_and(|c| c.starts_with("failure command")),
        "{hook:?}"
    );

    let stdin = read(&site.path("cwd/failure-stdin"));
    assert!(stdin.contains("Deploy manifest failed"), "{stdin}");
    assert!(
        stdin.lines().all(|l| !l.starts_with('{')),
        "hooks get plain text: {stdin}"
    );
}
