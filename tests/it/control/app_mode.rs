//! The agent's app mode end to end: a manifest with `app:` through the real agent, a real
//! supervisor and the demo app, then the CLI verbs on what it deployed.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use crate::support::app::App;
use crate::support::supervisor::Supervisor;
use crate::support::wait_until;

/// Generous: a deploy starts processes and waits for health on a loaded 2-core box.
const DEADLINE: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `bytes` (a command's stdout or stderr) contain `needle`.
#[track_caller]
fn assert_contains(bytes: &[u8], needle: &str) {
    assert!(text(bytes).contains(needle), "{}", text(bytes));
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The stretcher way: the manifest URL on the agent's stdin.
fn deploy_from_stdin(sup: &Supervisor, manifest: &Path) -> Output {
    let mut agent = sup
        .cli()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the agent");
    let url = format!("file://{}\n", manifest.display());
    agent
        .stdin
        .take()
        .unwrap()
        .write_all(url.as_bytes())
        .unwrap();
    agent.wait_with_output().expect("agent output")
}

#[test]
fn a_manifest_with_an_app_goes_live_and_the_verbs_drive_it() {
    let app = App::new("shop");
    let sup = Supervisor::start();

    let v1 = app.write_manifest("v1", &["shared: [ log ]"]);
    let out = deploy_from_stdin(&sup, &v1);
    assert_ok("deploy v1", &out);
    assert_contains(&out.stderr, "shop v1 is live");
    // On disk before the supervisor is asked to make it live.
    let release = std::fs::canonicalize(app.dest.join("releases/v1")).expect("the release");
    assert_contains(
        &out.stderr,
        &format!("flushed {} to disk", release.display()),
    );
    assert!(app.dest.join("releases/v1/VERSION").is_file());
    assert_eq!(
        std::fs::read_link(app.dest.join("current"))
            .unwrap()
            .file_name(),
        Some("v1".as_ref()),
        "current points at the live release"
    );
    assert!(std::fs::symlink_metadata(app.dest.join("releases/v1/log"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(app.serves("v1"), "{:?}", app.get());

    let v2 = app.write_manifest("v2", &[]);
    let out = sup.apply(&v2);
    assert_ok("deploy v2", &out);
    assert_contains(&out.stderr, "shop v2 is live (was v1)");
    assert!(app.serves("v2"));

    let out = sup.run(&["status", "shop", "--json"]);
    assert_ok("status --json", &out);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status["apps"][0]["live_version"], "v2", "{status}");
    let out = sup.run(&["status", "shop"]);
    assert_ok("status", &out);
    let table = text(&out.stdout);
    assert!(table.starts_with("APP   LISTEN"), "{table}");
    assert!(table.contains(&app.listen.to_string()), "{table}");
    assert!(table.contains("INSTANCE"), "{table}");

    let out = sup.run(&["releases", "shop"]);
    assert_ok("releases", &out);
    let list = text(&out.stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with("v2 ") && l.contains("live")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("v1 ") && l.contains("previous")),
        "{list}"
    );

    let out = sup.run(&["logs", "shop", "-n", "50"]);
    assert_ok("logs", &out);
    assert_contains(&out.stdout, "] demo-app: v2 listening on");

    let out = sup.run(&["rollback", "shop"]);
    assert_ok("rollback", &out);
    assert_contains(&out.stdout, "shop rolled back to v1 (from v2)");
    assert!(app.serves("v1"));

    let out = sup.run(&["stop", "shop"]);
    assert_ok("stop", &out);
    assert!(
        text(&out.stdout).starts_with("stopped shop (1 instance)"),
        "{}",
        text(&out.stdout)
    );
    wait_until("the listen port to close", DEADLINE, || app.get().is_err());
    let out = sup.run(&["status", "shop"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a stopped app is forgotten: {}",
        text(&out.stderr)
    );
}

#[test]
fn a_failed_rollout_fails_the_agent_and_the_old_release_keeps_serving() {
    let mut app = App::new("shop");
    app.faults = vec![("v2".into(), "--fail-boot".into())];
    let sup = with_v1_live(&app);

    let v2 = app.write_manifest("v2", &[]);
    let out = sup.apply(&v2);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_contains(&out.stderr, "rollout of shop v2 failed: ");
    assert!(app.serves("v1"));
    assert_eq!(sup.live_version("shop").as_deref(), Some("v1"));
}

/// A supervisor of its own running v1 of `app`, deployed through the agent.
fn with_v1_live(app: &App) -> Supervisor {
    let sup = Supervisor::start();
    assert_ok("deploy v1", &sup.apply(&app.write_manifest("v1", &[])));
    sup
}

/// Whether a rollout of `version` of the app runs (the supervisor's phase names it).
fn rolling_out(sup: &Supervisor, version: &str) -> bool {
    sup.try_status("shop")
        .is_ok_and(|status| status.phase.contains(version))
}

/// Kills the child on drop, so a failing test leaves no agent behind.
struct Agent(Child);

impl Agent {
    /// `cutover apply MANIFEST` against `sup`, left running; its output piped or dropped.
    fn apply(sup: &Supervisor, manifest: &Path, piped: bool) -> Agent {
        let output = || if piped { Stdio::piped() } else { Stdio::null() };
        let child = sup
            .cli()
            .arg("apply")
            .arg(manifest)
            .stdout(output())
            .stderr(output())
            .spawn()
            .expect("spawn the agent");
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_client_that_leaves_mid_deploy_does_not_abort_it_nor_block_the_socket() {
    let mut app = App::new("shop");
    app.faults = vec![("v2".into(), "--boot-delay 3000".into())];
    let sup = with_v1_live(&app);

    // v2 takes a few seconds to boot: long enough to walk away from its rollout.
    let v2 = app.write_manifest("v2", &[]);
    let mut agent = Agent::apply(&sup, &v2, false);
    wait_until("the v2 rollout to start", DEADLINE, || {
        rolling_out(&sup, "v2")
    });
    // The socket still answers other requests while the rollout runs.
    assert!(app.serves("v1"));
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();

    wait_until("v2 to go live without its client", DEADLINE, || {
        app.serves("v2")
    });
    assert_eq!(sup.live_version("shop").as_deref(), Some("v2"));
}

#[test]
fn without_a_supervisor_the_agent_places_the_release_and_fails_clearly() {
    let app = App::new("shop");
    let socket = app.home().join("none.sock");
    let manifest = app.write_manifest("v1", &[]);
    let out = crate::support::cutover()
        .arg("apply")
        .arg(&manifest)
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(app.home().join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let expected = format!(
        "no supervisor listening on {}: start it with `cutover supervise`",
        socket.display()
    );
    assert_contains(&out.stderr, &expected);
    // The release is in place (immutable, reused by the next attempt); nothing went live.
    assert!(app.dest.join("releases/v1/VERSION").is_file());
    assert!(std::fs::symlink_metadata(app.dest.join("current")).is_err());
}

#[test]
fn a_supervisor_killed_mid_deploy_ends_the_agent_with_a_clear_error() {
    // The v2 candidate may be started just before the kill, before its pid is on record: the
    // app kills what runs in its home on drop.
    let mut app = App::new("shop");
    app.faults = vec![("v2".into(), "--boot-delay 5000".into())];
    let mut sup = with_v1_live(&app);

    let v2 = app.write_manifest("v2", &[]);
    let agent = Agent::apply(&sup, &v2, true);
    wait_until("the v2 rollout to start", DEADLINE, || {
        rolling_out(&sup, "v2")
    });
    sup.kill_9();

    let mut agent = agent;
    wait_until("the agent to give up", DEADLINE, || {
        agent.0.try_wait().unwrap().is_some()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(agent.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(agent.0.wait().unwrap().code(), Some(1), "{err}");
    assert!(
        err.contains("closed the connection before answering: it may have stopped or crashed"),
        "{err}"
    );
    // The apps outlive their supervisor: v1 still answers on its own.
    sup.restart();
    wait_until("v1 to serve after the restart", DEADLINE, || {
        app.serves("v1")
    });
}

#[test]
fn logs_follow_picks_up_the_instances_of_a_new_release() {
    let app = App::new("shop");
    let sup = with_v1_live(&app);

    let mut follower = Agent(
        sup.cli()
            .args(["logs", "shop", "-f", "-n", "5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Collect its output on a thread: the pipe must be drained while the test goes on.
    let stdout = follower.0.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let mut seen = sink.lock().unwrap();
            seen.push_str(&line);
            seen.push('\n');
        }
    });
    let has = |needle: &str| seen.lock().unwrap().contains(needle);
    wait_until("v1's start line", DEADLINE, || {
        has("demo-app: v1 listening on")
    });

    let v2 = app.write_manifest("v2", &[]);
    assert_ok("deploy v2", &sup.apply(&v2));
    wait_until("v2's start line in the followed output", DEADLINE, || {
        has("demo-app: v2 listening on")
    });
    let text = seen.lock().unwrap().clone();
    assert!(
        text.lines().all(|l| l.starts_with('[')),
        "every line names its instance: {text}"
    );
}
