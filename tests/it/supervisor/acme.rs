//! Certificates ordered over ACME from a real CA, Let's Encrypt's Pebble: HTTP-01 and
//! TLS-ALPN-01 answered by the supervisor, the certificate renewed under HTTPS load without a
//! failed request, stored certificates served at once after a restart (with Pebble gone, so no
//! order could help) and after a hand-over under load (nothing ordered again), and a CA that
//! cannot be reached said in one line while the app runs on; `/metrics` tells when the served
//! certificate expires.
//! Clients trust only Pebble's root and validate the chain as a browser does.

use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

use cutover::protocol::tls::Challenge;
use cutover::supervisor::proxy::certificate_validity;

use crate::support::acme::{self, served_cert, HOST, ISSUE};
use crate::support::app::App;
use crate::support::metrics::{listen_on, parse, promtool_check, scrape_text, value};
use crate::support::pebble::Pebble;
use crate::support::supervisor::{Supervisor, ROLLOUT};
use crate::support::tls;
use crate::support::{free_port, wait_until};

/// An app named `name` whose certificate for [`HOST`] comes from `directory` by `challenge`,
/// answering HTTP-01 on `http_port`.
fn app(
    name: &str,
    pebble: Option<&Pebble>,
    directory: &str,
    challenge: Challenge,
    http_port: u16,
) -> App {
    let ca = pebble.map(|p| p.api_ca.clone());
    acme::app(
        name,
        &[HOST],
        &acme::spec(directory, ca, challenge, http_port),
    )
}

/// Pebble, validating on free ports, and an app named `name` that orders from it by
/// `challenge`, listening on the port Pebble checks TLS-ALPN-01 on; `validity` in seconds
/// (Pebble's default when `None`).
fn with_pebble(name: &str, challenge: Challenge, validity: Option<u64>) -> (Pebble, App) {
    let http_port = free_port();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let pebble = Pebble::checking(http_port, listen.port(), validity);
    let mut app = app(name, Some(&pebble), &pebble.directory, challenge, http_port);
    app.listen = listen;
    (pebble, app)
}

fn wait_for_cert(pebble: &Pebble, addr: SocketAddr) -> Vec<u8> {
    acme::wait_for_cert(pebble, addr, HOST)
}

fn ordered_and_served(name: &str, challenge: Challenge) {
    let (pebble, app) = with_pebble(name, challenge, None);
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let supervisor = Supervisor::start_with(app.home(), listen_on(admin));
    supervisor.deploy_ok(&app, "v1");
    let served = wait_for_cert(&pebble, app.listen);
    let status = supervisor.status(&app);
    let said = status.certificate.unwrap_or_default();
    assert!(said.starts_with("acme, valid until "), "{said}");
    let stored = supervisor
        .state_dir
        .join("certs")
        .join(format!("{HOST}.pem"));
    assert!(stored.exists(), "{} stored", stored.display());
    // `/metrics` says when the served certificate expires.
    let (_, not_after) = certificate_validity(&served).expect("an X.509 certificate");
    let not_after = not_after.duration_since(UNIX_EPOCH).unwrap().as_secs() as f64;
    let text = scrape_text(admin).expect("a scrape");
    promtool_check(&text).unwrap_or_else(|lint| panic!("promtool: {lint}\n{text}"));
    let expiry = value(
        &parse(&text),
        "cutover_certificate_expiry_timestamp_seconds",
        &[("app", name), ("host", HOST)],
    );
    assert_eq!(expiry, not_after, "{text}");
}

#[test]
fn an_app_gets_its_certificate_over_http_01_and_serves_it_to_clients_trusting_only_the_ca() {
    ordered_and_served("acme-http", Challenge::Http01);
}

#[test]
fn an_app_gets_its_certificate_over_tls_alpn_01_on_its_own_port() {
    ordered_and_served("acme-alpn", Challenge::TlsAlpn01);
}

#[test]
fn a_short_lived_certificate_is_renewed_under_load_without_a_failed_request() {
    // Renewed when a third is left: about 20 s after it is issued.
    let (pebble, app) = with_pebble("acme-renew", Challenge::Http01, Some(30));
    let listen = app.listen;
    let supervisor = Supervisor::start_in(app.home());
    supervisor.deploy_ok(&app, "v1");
    let first = wait_for_cert(&pebble, listen);
    let url = format!("https://{HOST}:{}/", listen.port());
    let load = tls::load(pebble.client(listen, HOST), &url, 4);
    load.wait_for_more_ok(20, ROLLOUT);
    wait_until("a renewed certificate", ISSUE, || {
        served_cert(&pebble, listen, HOST).is_ok_and(|der| der != first)
    });
    load.wait_for_more_ok(20, ROLLOUT);
    let report = load.stop();
    assert_eq!(report.failures(), 0, "{report:?}");
    assert!(supervisor
        .log()
        .contains("new certificate for shop.example.com"));
}

#[test]
fn stored_certificates_are_served_at_once_after_a_restart_without_a_new_order() {
    let (mut pebble, app) = with_pebble("acme-restart", Challenge::Http01, None);
    let listen = app.listen;
    let mut supervisor = Supervisor::start_in(app.home());
    supervisor.deploy_ok(&app, "v1");
    let issued = wait_for_cert(&pebble, listen);
    // No CA any more: only what is stored can be served.
    pebble.stop();
    supervisor.restart();
    let served = served_cert(&pebble, listen, HOST).expect("HTTPS right after the restart");
    assert_eq!(served, issued, "the stored certificate");
    let log = supervisor.log();
    assert_eq!(log.matches("new certificate for").count(), 1, "{log}");
    assert!(
        log.contains("serving the stored certificate of shop.example.com"),
        "{log}"
    );
}

#[test]
fn a_ca_that_cannot_be_reached_is_said_in_one_line_and_the_app_runs_on() {
    let dead = free_port();
    let app = app(
        "acme-dead",
        None,
        &format!("https://127.0.0.1:{dead}/dir"),
        Challenge::Http01,
        free_port(),
    );
    let supervisor = Supervisor::start_in(app.home());
    supervisor.deploy_ok(&app, "v1");
    wait_until("the failure in status", ROLLOUT, || {
        supervisor.status(&app).certificate.is_some_and(|said| {
            said.starts_with("acme, ordering: cannot create an account at the ACME directory")
        })
    });
    let said = supervisor.status(&app).certificate.expect("said");
    assert!(!said.contains('\n'), "{said}");
    assert!(supervisor.log().contains("ordering a certificate for shop.example.com failed (attempt 1): cannot create an account at the ACME directory"));
    let status = supervisor.status(&app);
    assert_eq!(status.live_version.as_deref(), Some("v1"));
}

#[test]
fn a_hand_over_under_https_load_keeps_the_certificate_and_orders_nothing_new() {
    let (pebble, app) = with_pebble("acme-handover", Challenge::Http01, None);
    let listen = app.listen;
    let mut supervisor = Supervisor::start_in(app.home());
    supervisor.deploy_ok(&app, "v1");
    let issued = wait_for_cert(&pebble, listen);
    let url = format!("https://{HOST}:{}/", listen.port());
    let load = tls::load(pebble.client(listen, HOST), &url, 4);
    load.wait_for_more_ok(20, ROLLOUT);
    supervisor.take_over();
    load.wait_for_more_ok(20, ROLLOUT);
    let report = load.stop();
    assert_eq!(report.failures(), 0, "{report:?}");
    assert_eq!(served_cert(&pebble, listen, HOST).expect("HTTPS"), issued);
    let log = supervisor.log();
    assert_eq!(log.matches("new certificate for").count(), 1, "{log}");
    assert_eq!(log.matches("created an ACME account").count(), 1, "{log}");
    assert!(
        supervisor
            .status(&app)
            .certificate
            .is_some_and(|said| said.starts_with("acme, valid until ")),
        "status after the hand-over"
    );
}
