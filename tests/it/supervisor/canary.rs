//! Canary releases through a real supervisor under real load: a candidate with 5 % errors is
//! backed out at its first step on its own and clients see at most that step's share of errors;
//! a good one is promoted step by step; `auto_promote: false` waits for `cutover promote`, and
//! `cutover abort` backs a canary out at any time. With the default analysis, canaries of the
//! same code are promoted time after time, and one 20 ms slower is backed out on its p99.

use std::time::Duration;

use cutover::protocol::app::Strategy;
use cutover::protocol::{AppSpec, CanaryRequest, ErrorKind, ReleaseState, Request, Response};

use crate::support::app::{self, App};
use crate::support::control_socket::{error_of, state_of};
use crate::support::load::Load;
use crate::support::supervisor::{Supervisor, ROLLOUT};

/// Two steps, short pauses, a small minimum: a whole canary takes a few seconds.
fn canary(spec: &mut AppSpec) {
    app::canary(spec, &["10%", "50%"], Duration::from_secs(1), 50);
    // A p99 over one second of a debug build on a loaded 2-core box swings by 2x and more; the
    // latency judgement has unit tests, these tests are about errors and decisions.
    spec.canary.max_p99_ratio = 10.0;
}

fn manual(spec: &mut AppSpec) {
    canary(spec);
    spec.canary.auto_promote = false;
}

/// A supervisor with v1 live (v2 and v3 placed) under 4 keep-alive clients.
fn under_load(app: &App) -> (Supervisor, Load) {
    let supervisor = app.serving(&["v1", "v2", "v3"]);
    let load = Load::start(app.listen, 4, "/");
    load.wait_for_more_ok(200, ROLLOUT);
    (supervisor, load)
}

#[test]
fn a_canary_with_five_percent_errors_is_backed_out_at_its_first_step() {
    let mut app = App::new("shop");
    app.tweak = canary;
    app.faults = vec![("v2".to_owned(), "--error-rate 0.05".to_owned())];
    let (supervisor, load) = under_load(&app);
    let before = load.snapshot();

    let (kind, message) = error_of(supervisor.deploy(&app, "v2"));
    assert_eq!(kind, ErrorKind::DeployFailed, "{message}");
    assert!(message.contains("canary step 1/2"), "{message}");
    assert!(message.contains("above max_error_rate 1%"), "{message}");
    load.wait_for_more_ok(200, ROLLOUT);
    let report = load.stop();

    assert_eq!(supervisor.status(&app).live_version.as_deref(), Some("v1"));
    assert_eq!(
        state_of(&supervisor.releases(&app), "v2"),
        Some(ReleaseState::Bad)
    );
    // What clients saw of the bad release: its 500s, within the first step's 10 % of the traffic.
    let during = report.ok + report.failures() - before.ok - before.failures();
    let v2 = report.versions.get("v2").copied().unwrap_or(0);
    assert!(
        report.failures() > 0,
        "the canary did take traffic: {report:?}"
    );
    assert_eq!(report.socket_errors, 0, "{report:?}");
    assert_eq!(
        report.failures(),
        report.failed.get(&500).copied().unwrap_or(0)
    );
    assert!(
        report.failures() * 10 <= during,
        "errors beyond the step's share: {report:?}"
    );
    assert!(
        v2 * 100 <= during * 11,
        "v2 took more than its 10%: {report:?}"
    );
}

#[test]
fn a_good_canary_is_promoted_step_by_step_without_a_failed_request() {
    let mut app = App::new("shop");
    app.tweak = canary;
    let (supervisor, load) = under_load(&app);

    supervisor.deploy_ok(&app, "v2");
    load.wait_for_more_ok(200, ROLLOUT);
    let report = load.stop();
    assert_eq!(report.failures(), 0, "{report:?}");
    assert!(
        report.versions.get("v2").copied().unwrap_or(0) > 0,
        "{report:?}"
    );
    assert_eq!(supervisor.status(&app).live_version.as_deref(), Some("v2"));
    let log = supervisor.log();
    for line in [
        "canary step 1/2 at 10% passed",
        "canary step 2/2 at 50% passed",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
}

#[test]
fn promote_and_abort_decide_a_canary_that_waits_for_the_operator() {
    let mut app = App::new("shop");
    app.tweak = manual;
    let (supervisor, load) = under_load(&app);
    let decide = |promote: bool| {
        let request = CanaryRequest {
            app: app.name.clone(),
        };
        supervisor.request(if promote {
            Request::Promote(request)
        } else {
            Request::Abort(request)
        })
    };
    // Nothing to decide while no canary runs.
    let (kind, message) = error_of(decide(true));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");

    let (supervisor, app) = (&supervisor, &app);
    std::thread::scope(|s| {
        let waiting = |version| supervisor.deploy_until_it_waits(s, app, version);
        // v2 passes its steps, then waits; `abort` backs it out and marks it bad.
        let deploy = waiting("v2");
        assert!(matches!(decide(false), Response::Decided(_)));
        let (kind, message) = error_of(deploy.join().unwrap());
        assert_eq!(kind, ErrorKind::DeployFailed, "{message}");
        assert!(message.contains("aborted by the operator"), "{message}");

        // v3 waits the same way; `promote` switches all traffic to it.
        let deploy = waiting("v3");
        assert!(matches!(decide(true), Response::Decided(_)));
        assert!(matches!(deploy.join().unwrap(), Response::Deployed(_)));
    });
    load.wait_for_more_ok(100, ROLLOUT);
    let report = load.stop();
    assert_eq!(report.failures(), 0, "{report:?}");
    assert_eq!(supervisor.status(app).live_version.as_deref(), Some("v3"));
    assert_eq!(
        state_of(&supervisor.releases(app), "v2"),
        Some(ReleaseState::Bad)
    );
}

/// The analysis as a manifest gets it by default, with one short step: half the clients for 5 s
/// (at 400 requests a second, about when each side has the 1,000 requests a p99 needs).
fn one_step(spec: &mut AppSpec) {
    spec.strategy = Strategy::Canary;
    spec.canary.steps = vec!["50%".parse().unwrap()];
    spec.canary.pause = Duration::from_secs(5);
}

/// Issue 11, item 4: canaries of the very code that runs were backed out for a p99 of a few
/// slow requests ("p99 2.8ms is 2.00x the stable 1.4ms"), 5 of these 20 before the fix.
#[test]
fn twenty_canaries_of_the_same_code_under_light_load_are_all_promoted() {
    let mut app = App::new("shop");
    app.tweak = one_step;
    let versions: Vec<String> = (0..=20).map(|n| format!("v{n}")).collect();
    let names: Vec<&str> = versions.iter().map(String::as_str).collect();
    let supervisor = app.serving(&names[..1]);
    let load = Load::paced(app.listen, 8, 400, "/");
    load.wait_for_more_ok(200, ROLLOUT);

    // Every deploy is tried, so that a failure shows how many of the twenty were backed out.
    let mut backed_out = Vec::new();
    for version in &names[1..] {
        // Placed one by one: `keep_releases` prunes releases placed but never deployed.
        app.place(version);
        match supervisor.deploy(&app, version) {
            Response::Deployed(_) => {}
            Response::Error(e) => backed_out.push(format!("{version}: {}", e.message)),
            other => panic!("deploy of {version}: {other:?}"),
        }
    }
    let report = load.stop();
    assert!(
        backed_out.is_empty(),
        "{} of 20 canaries of the same code backed out:\n{}",
        backed_out.len(),
        backed_out.join("\n")
    );
    assert_eq!(report.failures(), 0, "{report:?}");
    assert_eq!(supervisor.status(&app).live_version.as_deref(), Some("v20"));
}

#[test]
fn a_canary_three_times_slower_by_twenty_milliseconds_is_backed_out_on_its_p99() {
    let mut app = App::new("shop");
    app.tweak = one_step;
    app.faults = vec![
        ("v1".to_owned(), "--delay 10".to_owned()),
        ("v2".to_owned(), "--delay 30".to_owned()),
    ];
    let supervisor = app.serving(&["v1", "v2"]);
    let load = Load::paced(app.listen, 8, 400, "/");
    load.wait_for_more_ok(200, ROLLOUT);

    let (kind, message) = error_of(supervisor.deploy(&app, "v2"));
    assert_eq!(kind, ErrorKind::DeployFailed, "{message}");
    assert!(
        message.contains("canary step 1/1 at 50%: p99 "),
        "{message}"
    );
    assert!(message.contains("allowed, clearly more than"), "{message}");
    let report = load.stop();
    assert_eq!(report.failures(), 0, "{report:?}");
    assert_eq!(supervisor.status(&app).live_version.as_deref(), Some("v1"));
    assert_eq!(
        state_of(&supervisor.releases(&app), "v2"),
        Some(ReleaseState::Bad)
    );
}
