//! `access_log: true`: every request through the proxy is one JSON line in
//! `STATE/logs/<app>/access.log`, naming the release and the side of a canary that answered it;
//! the file follows logrotate (rename or `copytruncate`) without a signal.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover::protocol::{AppSpec, CanaryRequest, Request as ControlRequest, Response};
use serde_json::{Map, Value};

use crate::support::app::{self, App};
use crate::support::control_socket::error_of;
use crate::support::request::{self, Answer, Request};
use crate::support::supervisor::{Supervisor, ROLLOUT};
use crate::support::{json_lines, wait_until};

/// The access log on, and a canary that stays at its one step (50 %) until it is aborted.
fn logged_canary(spec: &mut AppSpec) {
    spec.access_log = true;
    app::canary(spec, &["50%"], Duration::from_secs(600), 1_000_000);
    spec.canary.progress_deadline = Duration::from_secs(600);
}

fn logged(spec: &mut AppSpec) {
    spec.access_log = true;
}

fn access_log(supervisor: &Supervisor, app: &App) -> PathBuf {
    supervisor
        .state_dir
        .join("logs")
        .join(&app.name)
        .join("access.log")
}

/// The lines of the access log at `path`, by request id, once every one of `ids` has its line.
fn lines_of(path: &Path, ids: &[&str]) -> BTreeMap<String, Map<String, Value>> {
    let read = || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        json_lines(&text)
            .into_iter()
            .map(|line| (line["request_id"].as_str().unwrap_or("").to_owned(), line))
            .collect::<BTreeMap<_, _>>()
    };
    wait_until("every request's line in the access log", ROLLOUT, || {
        let lines = read();
        ids.iter().all(|id| lines.contains_key(*id))
    });
    read()
}

/// Sends `request` with the request id `id`; an error unless it was answered.
fn send(app: &App, request: Request, id: &str) -> Answer {
    request
        .header("x-request-id", id)
        .send(app.listen)
        .unwrap_or_else(|e| panic!("request {id}: {e}"))
}

/// Checks the fields every line has, whatever the request.
#[track_caller]
fn assert_common(line: &Map<String, Value>, method: &str, path: &str, status: u16) {
    assert_eq!(line["app"], "shop", "{line:?}");
    assert_eq!(line["method"], method, "{line:?}");
    assert_eq!(line["path"], path, "{line:?}");
    assert_eq!(line["status"], status, "{line:?}");
    assert_eq!(line["client"], "127.0.0.1", "{line:?}");
    let time = line["time"].as_str().expect("time is a string");
    assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
    let ms = line["duration_ms"]
        .as_f64()
        .expect("duration_ms is a number");
    assert!((0.0..60_000.0).contains(&ms), "{line:?}");
}

#[test]
fn each_request_is_a_json_line_naming_its_release_and_slot() {
    let mut app = App::new("shop");
    app.tweak = logged_canary;
    let supervisor = app.serving(&["v1", "v2"]);

    // v1 alone: the stable slot, whatever the request.
    let bytes = send(&app, Request::get("/bytes?n=5000"), "req-bytes");
    let missing = send(&app, Request::get("/missing?q=a%20b"), "req-missing");
    let upload = send(
        &app,
        Request::new("POST", "/upload").body("hello"),
        "req-upload",
    );
    let unnamed = Request::get("/").send(app.listen).expect("a GET");
    let unnamed_id = unnamed
        .header("x-request-id")
        .expect("the proxy's id")
        .to_owned();

    // v2 as a canary at 50 %: requests by turn go to both sides, the tester header to v2.
    let (supervisor, app) = (&supervisor, &app);
    let (pinned, by_turn) = std::thread::scope(|s| {
        let deploy = s.spawn(move || supervisor.deploy(app, "v2"));
        wait_until("the canary's step", ROLLOUT, || {
            supervisor.status(app).phase.contains("canary step 1/1")
        });
        let pinned = send(
            app,
            Request::get("/").header("x-cutover-canary", "1"),
            "req-pinned",
        );
        // On one keep-alive connection, so on one proxy worker, whose turns alternate.
        let by_turn = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(async {
                let mut connection = request::connect(app.listen).await;
                let mut answers = Vec::new();
                for i in 0..6 {
                    let id = format!("req-turn-{i}");
                    let answer = Request::get("/")
                        .header("x-request-id", &id)
                        .send_on(&mut connection)
                        .await;
                    answers.push((id, answer));
                }
                answers
            });
        let abort = supervisor.request(ControlRequest::Abort(CanaryRequest {
            app: app.name.clone(),
        }));
        assert!(matches!(abort, Response::Decided(_)), "{abort:?}");
        let (_, message) = error_of(deploy.join().expect("the deploy thread"));
        assert!(message.contains("aborted by the operator"), "{message}");
        (pinned, by_turn)
    });

    let mut ids = vec![
        "req-bytes",
        "req-missing",
        "req-upload",
        unnamed_id.as_str(),
        "req-pinned",
    ];
    ids.extend(by_turn.iter().map(|(id, _)| id.as_str()));
    let lines = lines_of(&access_log(supervisor, app), &ids);

    let line = &lines["req-bytes"];
    assert_common(line, "GET", "/bytes?n=5000", 200);
    assert_eq!(line["release"], "v1");
    assert_eq!(line["slot"], "stable");
    assert_eq!(line["bytes"], 5000);
    assert_eq!(bytes.body.len(), 5000);

    let line = &lines["req-missing"];
    assert_common(line, "GET", "/missing?q=a%20b", 404);
    assert_eq!(line["bytes"], missing.body.len());

    let line = &lines["req-upload"];
    assert_common(line, "POST", "/upload", 200);
    assert_eq!(line["bytes"], upload.body.len());

    assert_common(&lines[&unnamed_id], "GET", "/", 200);

    // The tester header pins a request to the canary.
    assert_eq!(pinned.version(), Some("v2"));
    let line = &lines["req-pinned"];
    assert_common(line, "GET", "/", 200);
    assert_eq!(line["release"], "v2");
    assert_eq!(line["slot"], "canary");

    // By turn: each line names the side and release that answered.
    let mut slots = Vec::new();
    for (id, answer) in &by_turn {
        let line = &lines[id];
        assert_common(line, "GET", "/", 200);
        let version = answer.version().expect("a demo-app answer");
        assert_eq!(line["release"], version, "{line:?}");
        let slot = if version == "v2" { "canary" } else { "stable" };
        assert_eq!(line["slot"], slot, "{line:?}");
        assert_eq!(line["bytes"], answer.body.len(), "{line:?}");
        slots.push(slot);
    }
    assert!(
        slots.contains(&"canary") && slots.contains(&"stable"),
        "50 % by turn reaches both sides: {slots:?}"
    );
}

#[test]
fn the_access_log_follows_logrotate_by_rename_and_by_copytruncate() {
    let mut app = App::new("shop");
    app.tweak = logged;
    let supervisor = app.serving(&["v1"]);
    let path = access_log(&supervisor, &app);

    send(&app, Request::get("/"), "before-rotation");
    lines_of(&path, &["before-rotation"]);

    // logrotate's default: rename, and the next line starts a new file at the path.
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).expect("rotate by rename");
    send(&app, Request::get("/"), "after-rename");
    let lines = lines_of(&path, &["after-rename"]);
    assert!(!lines.contains_key("before-rotation"), "{lines:?}");
    let old = std::fs::read_to_string(&rotated).expect("the rotated file");
    assert!(
        old.contains("before-rotation") && !old.contains("after-rename"),
        "{old}"
    );

    // `copytruncate`: the file is emptied in place; the next line goes to its start.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| file.set_len(0))
        .expect("truncate the access log");
    send(&app, Request::get("/"), "after-truncate");
    let lines = lines_of(&path, &["after-truncate"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let text = std::fs::read(&path).expect("the access log");
    assert_eq!(text.first(), Some(&b'{'), "no hole before the line");

    // A logrotate `postrotate kill -HUP`, out of habit: said, and the supervisor keeps serving
    // (SIGHUP's default action would end it and close the app's port).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("send SIGHUP");
    wait_until("the supervisor to say it got SIGHUP", ROLLOUT, || {
        supervisor
            .log()
            .contains("SIGHUP received: nothing to reload")
    });
    send(&app, Request::get("/"), "after-hup");
    lines_of(&path, &["after-hup"]);

    // The access log is no instance's: `cutover logs` leaves it out.
    let logs = supervisor.run(&["logs", "shop"]);
    let shown = String::from_utf8_lossy(&logs.stdout);
    assert!(!shown.contains("[access]"), "{shown}");
}

#[test]
fn lines_the_disk_does_not_take_are_dropped_never_waited_for_and_counted_in_status() {
    let mut app = App::new("shop");
    app.tweak = logged;
    let supervisor = Supervisor::start_in(app.home());
    app.place("v1");
    // A FIFO that is open but never read stands for a disk that stopped taking writes: once
    // its 64 KiB are full, the writer thread blocks in write() and the workers' buffers fill.
    let path = access_log(&supervisor, &app);
    std::fs::create_dir_all(path.parent().expect("a directory")).expect("the log directory");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .expect("open the FIFO's read end");
    supervisor.deploy_ok(&app, "v1");
    app.wait_serving("v1");

    // Lines of about 4 KiB fill a worker's 512 KiB buffer in ~130 requests; each request is
    // still answered at once (it would hang if a worker waited for the disk).
    let long_path = format!("/?pad={}", "x".repeat(4000));
    let dropped = |supervisor: &Supervisor| {
        let status = supervisor.status(&app);
        status.access_log.expect("the access log in status")
    };
    let mut sent = 0;
    while dropped(&supervisor).dropped_lines == 0 {
        assert!(sent < 20_000, "no line dropped after {sent} requests");
        for _ in 0..100 {
            let answer = send(&app, Request::get(&long_path), &format!("r{sent}"));
            assert_eq!(answer.status, 200, "request {sent}: {answer:?}");
            sent += 1;
        }
    }
    let shown = supervisor.run(&["status", "shop"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("line(s) dropped (its writer fell behind)"),
        "{shown}"
    );

    // The disk fails outright (the reader goes away: writes get EPIPE): lines are lost, counted.
    drop(reader);
    wait_until("a failed write counted as lost lines", ROLLOUT, || {
        send(&app, Request::get("/"), "after-the-reader");
        dropped(&supervisor).lost_lines > 0
    });
}
