//! TCP mode through a real supervisor: every connection is piped whole to one instance, a
//! blue-green switch under a stream of new connections refuses or breaks none of them, and a
//! canary is judged on the connections the instance resets unanswered and on its time to answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover::protocol::app::Mode;
use cutover::protocol::{AppSpec, ErrorKind, ReleaseState, Response};

use crate::support::app::{self, App};
use crate::support::control_socket::{error_of, state_of};
use crate::support::request;
use crate::support::supervisor::{Supervisor, ROLLOUT};
use crate::support::wait_until;

fn tcp(spec: &mut AppSpec) {
    spec.mode = Mode::Tcp;
    // A TCP connect is the health check of an app that may not speak HTTP.
    spec.health.path = None;
}

/// One exchange on a new connection: the version that answered, or what went wrong.
fn exchange(app: &App) -> Result<String, String> {
    let answer = request::get(app.listen, "/")?;
    // Piped bytes, not proxied HTTP: nothing of the HTTP proxy's own (its request id) is added.
    if answer.header("x-request-id").is_some() {
        return Err(format!("answered through the HTTP proxy: {answer:?}"));
    }
    answer
        .version()
        .map(str::to_owned)
        .ok_or_else(|| format!("not a demo app answer: {answer:?}"))
}

#[test]
fn a_switch_in_tcp_mode_refuses_no_connection() {
    let mut app = App::new("shop");
    app.tweak = tcp;
    let supervisor = app.serving(&["v1", "v2"]);
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
    app::canary(spec, &["50%"], Duration::from_secs(1), 10);
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

/// The TCP canary app: v2 resets every other connection, v3 answers 200 ms late, v4 is good.
fn tcp_app() -> App {
    let mut app = App::new("shop");
    app.tweak = tcp_canary;
    app.faults = vec![
        ("v2".into(), "--drop-rate 0.5".into()),
        ("v3".into(), "--delay 200".into()),
    ];
    app
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
    let app = tcp_app();
    let supervisor = app.serving(&["v1", "v2", "v3", "v4"]);
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
    let app = tcp_app();
    let supervisor = app.serving(&["v1", "v2", "v3", "v4"]);
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
