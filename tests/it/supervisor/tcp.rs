//! TCP mode through a real supervisor: every connection is piped whole to one instance, a
//! blue-green switch under a stream of new connections refuses or breaks none of them, and a
//! canary is judged on the connections the instance resets unanswered and on its time to answer.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover::protocol::app::{Mode, Strategy};
use cutover::protocol::{AppSpec, ErrorKind, ReleaseState, Response};

use super::harness::{error_of, state_of, App, Reaper, Supervisor, ROLLOUT};
use crate::support::wait_until;

fn tcp(spec: &mut AppSpec) {
    spec.mode = Mode::Tcp;
    // A TCP connect is the health check of an app that may not speak HTTP.
    spec.health.path = None;
}

/// One exchange on a new connection: the version that answered, or what went wrong.
fn exchange(app: &App) -> Result<String, String> {
    let mut stream =
        std::net::TcpStream::connect(app.listen).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    // Piped bytes, not proxied HTTP: nothing of the HTTP proxy's own (its request id) is added.
    if answer.to_ascii_lowercase().contains("x-request-id") {
        return Err(format!("answered through the HTTP proxy: {answer:?}"));
    }
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    body.strip_prefix("hello from ")
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| format!("not a demo app answer: {answer:?}"))
}

#[test]
fn a_switch_in_tcp_mode_refuses_no_connection() {
    let home = tempfile::tempdir().expect("temp dir");
    let mut app = App::new(home.path(), "shop");
    app.tweak = tcp;
    let _reaper = Reaper(vec![app.dest.clone()]);
    let supervisor = Supervisor::start(home.path());
    app.place("v1");
    app.place("v2");
    supervisor.deploy_ok(&app, "v1");
    wait_until("v1 to answer through the TCP proxy", ROLLOUT, || {
        exchange(&app).as_deref() == Ok("v1")
    });

    let stop = AtomicBool::new(false);
    let seen: Mutex<Vec<Result<String, String>>> = Mutex::default();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let answer = exchange(&app);
                seen.lock().unwrap().push(answer);
            }
        });
        wait_until("connections flowing", ROLLOUT, || {
            seen.lock().unwrap().len() >= 50
        });
        supervisor.deploy_ok(&app, "v2");
        let switched = seen.lock().unwrap().len();
        wait_until("v2 answering", ROLLOUT, || {
            seen.lock().unwrap()[switched..]
                .iter()
                .filter(|a| a.as_deref() == Ok("v2"))
                .count()
                >= 50
        });
        stop.store(true, Ordering::Relaxed);
    });
    let seen = Arc::new(seen.into_inner().unwrap());
    let failed: Vec<&String> = seen.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    let stats = supervisor.status(&app);
    assert_eq!(stats.live_version.as_deref(), Some("v2"));
}

/// A canary in TCP mode: half the new connections at once, judged after a second on 10 of them.
fn tcp_canary(spec: &mut AppSpec) {
    tcp(spec);
    spec.strategy = Strategy::Canary;
    spec.canary.steps = vec!["50%".parse().unwrap()];
    spec.canary.pause = Duration::from_secs(1);
    spec.canary.min_requests = 10;
    spec.canary.progress_deadline = Duration::from_secs(30);
    // A debug build's p99 swings on a loaded box; the slow release below is 200 ms slow.
    spec.canary.max_p99_ratio = 5.0;
}

/// Deploys `version` while a client opens connection after connection; the deploy's answer and
/// what the connections got.
fn deploy_under_connections(
    supervisor: &Supervisor,
    app: &App,
    version: &str,
) -> (Response, Vec<Result<String, String>>) {
    let stop = AtomicBool::new(false);
    let seen: Mutex<Vec<Result<String, String>>> = Mutex::default();
    let response = std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let answer = exchange(app);
                    seen.lock().unwrap().push(answer);
                }
            });
        }
        wait_until("connections flowing", ROLLOUT, || {
            seen.lock().unwrap().len() >= 20
        });
        let response = supervisor.deploy(app, version);
        stop.store(true, Ordering::Relaxed);
        response
    });
    (response, seen.into_inner().unwrap())
}

fn tcp_app(home: &std::path::Path) -> (Reaper, Supervisor, App) {
    let mut app = App::new(home, "shop");
    app.tweak = tcp_canary;
    app.faults = vec![
        ("v2".into(), "--drop-rate 0.5".into()),
        ("v3".into(), "--delay 200".into()),
    ];
    let (reaper, supervisor) = app.serving(home, &["v1", "v2", "v3", "v4"]);
    (reaper, supervisor, app)
}

/// The canary of `version` failed its analysis for `why`: v1 still live, `version` marked bad.
fn assert_backed_out(
    supervisor: &Supervisor,
    app: &App,
    response: Response,
    version: &str,
    why: &str,
) {
    let (kind, message) = error_of(response);
    assert_eq!(kind, ErrorKind::DeployFailed, "{message}");
    assert!(message.contains(why), "{message}");
    assert_eq!(supervisor.status(app).live_version.as_deref(), Some("v1"));
    assert_eq!(
        state_of(&supervisor.releases(app), version),
        Some(ReleaseState::Bad)
    );
}

#[test]
fn a_tcp_canary_whose_instance_resets_connections_is_backed_out() {
    let home = tempfile::tempdir().expect("temp dir");
    let (_reaper, supervisor, app) = tcp_app(home.path());
    let (response, seen) = deploy_under_connections(&supervisor, &app, "v2");
    assert_backed_out(&supervisor, &app, response, "v2", "above max_error_rate");
    // v2 resets every other connection it gets, and answers the rest: the failures are its own.
    let failed = seen.iter().filter(|a| a.is_err()).count();
    let v2 = seen.iter().filter(|a| a.as_deref() == Ok("v2")).count();
    assert!(failed > 0, "the canary did take connections");
    assert!(failed <= v2 + 1, "{failed} failed, v2 answered {v2}");
}

#[test]
fn a_tcp_canary_slow_to_answer_is_backed_out_and_a_good_one_promoted() {
    let home = tempfile::tempdir().expect("temp dir");
    let (_reaper, supervisor, app) = tcp_app(home.path());
    let (response, _) = deploy_under_connections(&supervisor, &app, "v3");
    assert_backed_out(&supervisor, &app, response, "v3", "(max_p99_ratio 5)");

    let (response, seen) = deploy_under_connections(&supervisor, &app, "v4");
    assert!(matches!(response, Response::Deployed(_)), "{response:?}");
    let failed: Vec<&String> = seen.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        seen.iter().any(|a| a.as_deref() == Ok("v4")),
        "v4 took its share"
    );
    assert!(supervisor.log().contains("canary step 1/1 at 50% passed"));
}
