//! The command line's conventions: shell completions that the shell accepts, a man page that
//! `man` renders, and `--json` on the verbs that print, parsed from the answers of a real
//! supervisor and of a real two-node Serf fleet.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cutover::protocol::Response;
use serde_json::{json, Value};

use crate::support::app::{self, App};
use crate::support::fleet::{release, text, Behaviour, Fleet};
use crate::support::load::Load;
use crate::support::serf::GOSSIP;
use crate::support::supervisor::{Supervisor, ROLLOUT};
use crate::support::{cutover, wait_until};

/// The verbs a person types; `demo-app` (hidden) and `serf-handler` (run by Serf) are not.
const VERBS: [&str; 15] = [
    "apply",
    "supervise",
    "status",
    "releases",
    "rollback",
    "promote",
    "abort",
    "stop",
    "logs",
    "demo",
    "rollout",
    "fleet-status",
    "watch",
    "completions",
    "man",
];

fn stdout_of(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap_or_else(|e| panic!("{what} printed non-UTF-8: {e}"))
}

#[test]
fn the_bash_completion_names_every_verb_and_bash_accepts_it() {
    let script = stdout_of(
        cutover().args(["completions", "bash"]).output().unwrap(),
        "cutover completions bash",
    );
    for verb in VERBS {
        assert!(script.contains(verb), "no {verb} in the bash completion");
    }
    assert!(!script.contains("demo-app"), "a hidden verb is completed");
    assert!(
        !script.contains("serf-handler"),
        "serf's handler is completed"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cutover.bash");
    std::fs::write(&path, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(
        check.status.success(),
        "bash -n refuses the script: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Sourced, it completes a verb and a verb's flag.
    let complete = |words: &str, current: usize| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {} && COMP_WORDS=({words}) && COMP_CWORD={current} && \
                 _cutover cutover \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\" && \
                 echo \"${{COMPREPLY[@]}}\"",
                path.display()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(complete("cutover fl", 1), "fleet-status");
    assert_eq!(complete("cutover logs --j", 2), "--json");
}

#[test]
fn zsh_and_fish_get_a_script_and_an_unknown_shell_is_refused() {
    for (shell, marker) in [("zsh", "#compdef cutover"), ("fish", "complete -c cutover")] {
        let script = stdout_of(
            cutover().args(["completions", shell]).output().unwrap(),
            shell,
        );
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("fleet-status"), "{shell}");
    }
    let out = cutover().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a usage error, as for any bad flag"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("possible values: bash, zsh, fish"), "{err}");
}

/// Renders a roff page to text with groff (what `man` runs), or `None` without groff.
fn render(page: &Path) -> Option<String> {
    let out = Command::new("groff")
        .args(["-man", "-Tascii", "-P-cbou", "-ww"])
        .arg(page)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "groff fails on {}: {}",
        page.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(warnings.trim().is_empty(), "groff warns: {warnings}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_man_page_renders_and_lists_the_verbs_and_dir_writes_one_per_verb() {
    let page = stdout_of(cutover().arg("man").output().unwrap(), "cutover man");
    assert!(page.contains(".TH cutover 1"), "{page}");
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    assert!(!page.contains("demo\\-app"), "a hidden verb is in the page");
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("cutover.1");
    std::fs::write(&main, &page).unwrap();
    if let Some(text) = render(&main) {
        assert!(text.contains("NAME"), "{text}");
        assert!(text.contains("cutover-fleet-status"), "{text}");
        assert!(text.contains("--state-dir"), "{text}");
    }

    let pages = dir.path().join("man1");
    let out = cutover()
        .arg("man")
        .arg("--dir")
        .arg(&pages)
        .output()
        .unwrap();
    stdout_of(out, "cutover man --dir");
    for verb in VERBS.iter().chain(&["serf-handler"]) {
        let path = pages.join(format!("cutover-{verb}.1"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no page {}: {e}", path.display()));
        assert!(
            text.contains(&format!(".TH cutover-{verb} 1")),
            "{verb}: {text}"
        );
        if verb == &"logs" {
            if let Some(text) = render(&path) {
                assert!(text.contains("--follow"), "{text}");
                assert!(text.contains("--json"), "{text}");
            }
        }
    }
    assert!(pages.join("cutover.1").exists());
    assert!(!pages.join("cutover-demo-app.1").exists());
    assert!(!pages.join("cutover-help.1").exists());
}

/// Runs `cutover ARGS` against `supervisor` and parses its stdout as one JSON document.
fn json_of(supervisor: &Supervisor, args: &[&str]) -> Value {
    let out = stdout_of(supervisor.run(args), &args.join(" "));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} is not JSON ({e}): {out}"))
}

#[test]
fn the_verbs_that_print_answer_in_json_with_json() {
    let app = App::new("shop");
    let supervisor = app.serving(&["1.0.0", "2.0.0"]);
    supervisor.deploy_ok(&app, "2.0.0");
    app.wait_serving("2.0.0");

    let status = json_of(&supervisor, &["status", "--json"]);
    assert_eq!(status["apps"][0]["name"], "shop");
    assert_eq!(status["apps"][0]["live_version"], "2.0.0");

    let releases = json_of(&supervisor, &["releases", "shop", "--json"]);
    let live: Vec<&Value> = releases["releases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "live")
        .collect();
    assert_eq!(live.len(), 1, "{releases}");
    assert_eq!(live[0]["version"], "2.0.0");

    // Logs are a stream (`-f` too): one JSON object per line.
    let logs = stdout_of(
        supervisor.run(&["logs", "shop", "-n", "5", "--json"]),
        "logs --json",
    );
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in &lines {
        assert!(
            line["instance"].as_str().unwrap().starts_with("shop"),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l["line"].as_str().unwrap().contains("listening on")),
        "{logs}"
    );

    // Progress goes to stderr, the outcome alone to stdout.
    let rolled = json_of(&supervisor, &["rollback", "shop", "--json"]);
    assert_eq!(
        rolled,
        json!({ "app": "shop", "version": "1.0.0", "previous": "2.0.0" })
    );

    let stopped = json_of(&supervisor, &["stop", "shop", "--json"]);
    assert_eq!(stopped, json!({ "app": "shop", "stopped": 1 }));

    // No watch ever ran here: an empty list, not a sentence.
    let watches = json_of(&supervisor, &["watch", "--status", "--json"]);
    assert_eq!(watches, json!([]));
}

#[test]
fn rollout_and_fleet_status_answer_in_json_with_json() {
    let fleet = Fleet::start(2, true, |_| Vec::new());
    let v1 = release(fleet.root.path(), "shop", "1", Behaviour::Serves);
    let out = fleet.rollout(
        "n1",
        &[v1.to_str().unwrap(), "--max-parallel", "2", "--json"],
    );
    fleet.assert_rolled_out(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("rollout --json is not one JSON document ({e}): {stdout}"));
    let step = &report["steps"][0];
    assert_eq!(step["app"], "shop", "{report}");
    assert_eq!(step["version"], "1", "{report}");
    let mut updated: Vec<&str> = step["outcome"]["updated"]
        .as_array()
        .unwrap_or_else(|| panic!("{report}"))
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    updated.sort();
    assert_eq!(updated, ["n1", "n2"], "{report}");
    assert_eq!(step["outcome"]["halted"], Value::Null, "{report}");
    // The plan and the progress went to stderr.
    assert!(text(&out).contains("plan: shop 1"), "{}", text(&out));

    let rpc = &fleet.nodes[0].agent().rpc;
    wait_until("both nodes in fleet-status --json", GOSSIP, || {
        let out = cutover()
            .args(["fleet-status", "--json", "--rpc-addr", rpc])
            .output()
            .unwrap();
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "fleet-status --json is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let rows = rows.as_array().unwrap();
        rows.len() == 2
            && rows
                .iter()
                .all(|r| r["app"] == "shop" && r["version"] == "1" && r["health"] == "1/1")
    });
}

/// One short canary step that waits for the operator.
fn waits_for_the_operator(spec: &mut cutover::protocol::AppSpec) {
    app::canary(spec, &["50%"], Duration::from_millis(500), 20);
    spec.canary.max_p99_ratio = 10.0;
    spec.canary.auto_promote = false;
}

#[test]
fn promote_and_abort_answer_in_json_with_json() {
    let mut app = App::new("shop");
    app.tweak = waits_for_the_operator;
    let supervisor = app.serving(&["v1", "v2", "v3"]);
    let load = Load::start(app.listen, 2, "/");
    load.wait_for_more_ok(50, ROLLOUT);
    let (supervisor, app) = (&supervisor, &app);
    std::thread::scope(|s| {
        let waiting = |version| supervisor.deploy_until_it_waits(s, app, version);
        let deploy = waiting("v2");
        let aborted = json_of(supervisor, &["abort", "shop", "--json"]);
        assert_eq!(aborted["app"], "shop", "{aborted}");
        assert!(aborted["message"].as_str().is_some(), "{aborted}");
        assert!(matches!(deploy.join().unwrap(), Response::Error(_)));

        let deploy = waiting("v3");
        let promoted = json_of(supervisor, &["promote", "shop", "--json"]);
        assert_eq!(promoted["app"], "shop", "{promoted}");
        assert!(promoted["message"].as_str().is_some(), "{promoted}");
        assert!(matches!(deploy.join().unwrap(), Response::Deployed(_)));
    });
    load.stop();
}
