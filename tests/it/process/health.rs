//! Health checks against real demo-app processes: thresholds, reasons, `min_healthy_time`.

use std::time::{Duration, Instant};

use cutover::protocol::app::HealthSpec;
use cutover::supervisor::health::{Checker, Health, Probe};

use crate::support::load::DemoApp;

fn spec(path: Option<&str>, healthy: u32, unhealthy: u32) -> HealthSpec {
    HealthSpec {
        path: path.map(str::to_owned),
        interval: Duration::from_millis(50),
        timeout: Duration::from_secs(2),
        healthy,
        unhealthy,
        min_healthy_time: Duration::ZERO,
        deadline: Duration::from_secs(20),
    }
}

#[tokio::test]
async fn http_check_passes_on_a_healthy_app() {
    let app = DemoApp::start("v1", &[]);
    let spec = spec(Some("/healthz"), 3, 2);
    let mut checker = Checker::start(Probe::for_spec(&spec, app.addr(), false), &spec);
    checker
        .wait_healthy(Duration::from_secs(20))
        .await
        .expect("healthy");
    assert_eq!(checker.reports.borrow().last_failure, None);
}

#[tokio::test]
async fn an_http2_only_app_passes_an_h2c_check_and_fails_an_http1_one() {
    let app = DemoApp::start("v1", &["--h2c"]);
    let spec = spec(Some("/healthz"), 2, 1);
    let mut h2c = Checker::start(Probe::for_spec(&spec, app.addr(), true), &spec);
    h2c.wait_healthy(Duration::from_secs(20))
        .await
        .expect("healthy over HTTP/2");
    let mut http1 = Checker::start(Probe::for_spec(&spec, app.addr(), false), &spec);
    let reason = http1
        .wait_healthy(Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(reason.contains("GET /healthz"), "{reason}");
}

#[tokio::test]
async fn http_check_fails_with_the_status_in_the_reason() {
    let app = DemoApp::start("v1", &["--never-healthy"]);
    let spec = spec(Some("/healthz"), 1, 2);
    let mut checker = Checker::start(Probe::for_spec(&spec, app.addr(), false), &spec);
    let reason = checker
        .wait_healthy(Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(reason.contains("GET /healthz → 500"), "{reason}");
    let report = checker
        .reports
        .wait_for(|r| matches!(r.health, Health::Unhealthy { .. }))
        .await
        .unwrap()
        .clone();
    assert_eq!(
        report.health,
        Health::Unhealthy {
            reason: "GET /healthz → 500".into()
        }
    );
}

#[tokio::test]
async fn tcp_check_follows_the_listener() {
    let mut app = DemoApp::start("v1", &[]);
    let spec = spec(None, 1, 2);
    let mut checker = Checker::start(Probe::for_spec(&spec, app.addr(), false), &spec);
    checker
        .wait_healthy(Duration::from_secs(20))
        .await
        .expect("healthy");
    // Checks go on after healthy: a dead instance turns unhealthy with a connect reason.
    app.kill();
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        checker
            .reports
            .wait_for(|r| matches!(r.health, Health::Unhealthy { .. })),
    )
    .await
    .expect("unhealthy within 20s")
    .unwrap()
    .clone();
    let reason = report.last_failure.unwrap();
    assert!(reason.contains("refused"), "{reason}");
}

#[tokio::test]
async fn a_slow_app_times_out_with_that_reason() {
    // Health on /slow (1s) with a 200ms timeout: every check times out.
    let app = DemoApp::start("v1", &[]);
    let mut spec = spec(Some("/slow?ms=1000"), 1, 1);
    spec.timeout = Duration::from_millis(200);
    let mut checker = Checker::start(Probe::for_spec(&spec, app.addr(), false), &spec);
    let reason = checker
        .wait_healthy(Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(reason.contains("timed out after 200ms"), "{reason}");
}

#[tokio::test]
async fn min_healthy_time_is_honoured() {
    let app = DemoApp::start("v1", &[]);
    let mut spec = spec(Some("/healthz"), 1, 2);
    spec.min_healthy_time = Duration::from_millis(800);
    let started = Instant::now();
    let mut checker = Checker::start(Probe::for_spec(&spec, app.addr(), false), &spec);
    checker
        .wait_healthy(Duration::from_secs(20))
        .await
        .expect("healthy");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "healthy after {:?}, before min_healthy_time",
        started.elapsed()
    );
}
