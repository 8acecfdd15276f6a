//! Health checks against real demo-app processes: thresholds, reasons, `min_healthy_time`, and
//! the wire they speak (HTTP/1.1, h2c, HTTP/2 over TLS with the app's trust).

use std::time::{Duration, Instant};

use cutover::protocol::app::{HealthSpec, UpstreamTlsSpec};
use cutover::supervisor::health::{Checker, Health, Probe, Wire};
use cutover::supervisor::upstream_tls::UpstreamTls;

use crate::support::load::DemoApp;
use crate::support::tls::TestCa;

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
    let mut checker = Checker::start(Probe::for_spec(&spec, app.addr(), Ok(Wire::Http1)), &spec);
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
    let mut h2c = Checker::start(Probe::for_spec(&spec, app.addr(), Ok(Wire::H2c)), &spec);
    h2c.wait_healthy(Duration::from_secs(20))
        .await
        .expect("healthy over HTTP/2");
    let mut http1 = Checker::start(Probe::for_spec(&spec, app.addr(), Ok(Wire::Http1)), &spec);
    let reason = http1
        .wait_healthy(Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(reason.contains("GET /healthz"), "{reason}");
}

/// The trust of an `upstream: h2` app: the CA in `ca`, for `server_name` (`localhost` if none).
fn h2_over_tls(ca: &std::path::Path, server_name: Option<&str>) -> Wire {
    let spec = UpstreamTlsSpec {
        ca: Some(ca.to_owned()),
        server_name: server_name.map(str::to_owned),
    };
    Wire::H2(UpstreamTls::load("grpc", &spec).expect("the CA loads"))
}

#[tokio::test]
async fn an_h2_over_tls_check_passes_with_the_apps_trust_and_fails_without_it() {
    let certs = tempfile::tempdir().expect("temp dir for the certificates");
    let ca = TestCa::new(&certs.path().join("ca"));
    let stranger = TestCa::new(&certs.path().join("stranger"));
    let leaf = ca.issue("instance", &["localhost"]);
    let (cert, key) = (leaf.cert.to_str().unwrap(), leaf.key.to_str().unwrap());
    let app = DemoApp::start("v1", &["--tls-cert", cert, "--tls-key", key]);
    let spec = spec(Some("/healthz"), 2, 1);

    let trusted = Probe::for_spec(&spec, app.addr(), Ok(h2_over_tls(&ca.cert, None)));
    let mut checker = Checker::start(trusted, &spec);
    checker
        .wait_healthy(Duration::from_secs(20))
        .await
        .expect("healthy over HTTP/2 over TLS");

    for (wire, words) in [
        (
            // Signed by a CA of the same name, not by the one trusted.
            h2_over_tls(&stranger.cert, None),
            "invalid peer certificate: BadSignature",
        ),
        (
            h2_over_tls(&ca.cert, Some("grpc.internal")),
            "certificate not valid for name \"grpc.internal\"",
        ),
        // Plain HTTP/2 to a TLS port: the error is hyper's, whichever it meets first.
        (Wire::H2c, "GET /healthz"),
    ] {
        let probe = Probe::for_spec(&spec, app.addr(), Ok(wire));
        let mut checker = Checker::start(probe, &spec);
        let reason = checker
            .wait_healthy(Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(reason.contains(words), "{words}: {reason}");
    }
    let unreadable = Probe::for_spec(
        &spec,
        app.addr(),
        Err("upstream_tls.ca of grpc: cannot read".into()),
    );
    let reason = Checker::start(unreadable, &spec)
        .wait_healthy(Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        reason.contains("upstream_tls.ca of grpc: cannot read"),
        "{reason}"
    );
}

#[tokio::test]
async fn http_check_fails_with_the_status_in_the_reason() {
    let app = DemoApp::start("v1", &["--never-healthy"]);
    let spec = spec(Some("/healthz"), 1, 2);
    let mut checker = Checker::start(Probe::for_spec(&spec, app.addr(), Ok(Wire::Http1)), &spec);
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
    let mut checker = Checker::start(Probe::for_spec(&spec, app.addr(), Ok(Wire::Http1)), &spec);
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
    let mut checker = Checker::start(Probe::for_spec(&spec, app.addr(), Ok(Wire::Http1)), &spec);
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
    let mut checker = Checker::start(Probe::for_spec(&spec, app.addr(), Ok(Wire::Http1)), &spec);
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
