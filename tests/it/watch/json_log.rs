//! `cutover watch --log-format json`: every line the watcher writes is a JSON object.

use super::{Setup, DEADLINE};
use crate::support::{json_lines, wait_until};

#[test]
fn the_watchers_log_is_one_json_object_per_line() {
    let s = Setup::new();
    s.gh.set_manifest(
        "shop.yml",
        "dest: /srv/a\ncommands: {pre: [\"echo one\"]}\n",
    );
    let config = s.manifest_config(&s.gh.manifest_url("shop.yml"));
    let mut w = s.spawn_with_args(&config, &[], &["--log-format", "json"]);
    wait_until("the manifest deployed", DEADLINE, || s.deploys().len() == 1);
    w.sigterm();
    assert!(w.wait_exit(DEADLINE).success());

    let text = std::fs::read_to_string(s.path("watch.log")).expect("watch.log");
    let lines = json_lines(&text);
    assert!(!lines.is_empty(), "the watcher logged nothing");
    for line in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(line.contains_key(key), "no {key} in {line:?}");
        }
    }
    assert!(
        lines.iter().any(|l| l["message"] == "watch: shutting down"),
        "{text}"
    );
}

#[test]
fn a_watcher_that_cannot_start_says_why_in_json() {
    let s = Setup::new();
    let out = crate::support::cutover()
        .args(["--log-format", "json", "watch", "--config"])
        .arg(s.path("missing.yml"))
        .output()
        .expect("run cutover watch");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = json_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert_eq!(lines[0]["level"], "ERROR");
    assert_eq!(lines[0]["verb"], "cutover watch");
    let message = lines[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("missing.yml"), "{message}");
}
