//! What CAs ask of an ACME client beyond the basics, against Pebble: DNS-01 answered through the
//! operator's hook (here `curl` to pebble-challtestsrv's API, as a hook would to a DNS
//! provider's) for a wildcard certificate, a failing hook said in one line; an account that
//! must carry an external account binding; and, through a front that adds what Pebble 2.4
//! lacks (see `support::ca_front`), a renewal at the time the CA suggests (ARI) naming the
//! certificate it replaces, a rate-limited order tried again no sooner than Retry-After, and
//! the challenge-only port given up to an app deployed on its address while an order is open.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover::protocol::tls::{AcmeSpec, Challenge, Eab};
use cutover::protocol::ErrorKind;

use crate::support::acme::{self, served_cert, wait_for_cert, HOST, ISSUE};
use crate::support::app::App;
use crate::support::ca_front::CaFront;
use crate::support::control_socket::error_of;
use crate::support::pebble::{Pebble, PebbleSetup};
use crate::support::request::get;
use crate::support::supervisor::{Supervisor, ROLLOUT};
use crate::support::{free_port, wait_until};

/// A DNS-01 hook that sets and clears TXT records in pebble-challtestsrv and notes each call
/// in `calls`; `fail` makes it fail as a provider's API does when the token is wrong.
fn hook(dir: &Path, dns_management: SocketAddr, fail: bool) -> (PathBuf, PathBuf) {
    let (hook, calls) = (dir.join("dns-hook"), dir.join("dns-hook.calls"));
    let api = format!("http://{dns_management}");
    let body = if fail {
        "echo 'provider API: 403 invalid token' >&2\nexit 1".to_owned()
    } else {
        format!(
            r#"case "$1" in
  present) curl -sf -d "{{\"host\":\"$2\",\"value\":\"$3\"}}" {api}/set-txt ;;
  cleanup) curl -sf -d "{{\"host\":\"$2\"}}" {api}/clear-txt ;;
esac"#
        )
    };
    let script = format!(
        "#!/bin/sh\necho \"$1 $2 $CUTOVER_ACME_RECORD\" >> {}\n{body}\n",
        calls.display()
    );
    std::fs::write(&hook, script).expect("write the hook");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (hook, calls)
}

fn dns_spec(pebble: &Pebble, hook: PathBuf) -> AcmeSpec {
    AcmeSpec {
        dns_hook: Some(hook),
        ..acme::spec(
            &pebble.directory,
            Some(pebble.api_ca.clone()),
            Challenge::Dns01,
            free_port(),
        )
    }
}

#[test]
fn a_wildcard_certificate_comes_over_dns_01_through_the_operators_hook() {
    let pebble = Pebble::checking(free_port(), free_port(), None);
    let dir = tempfile::tempdir().expect("temp dir");
    let (hook, calls) = hook(dir.path(), pebble.dns_management, false);
    let app = acme::app(
        "acme-dns",
        &["*.apps.example.com"],
        &dns_spec(&pebble, hook),
    );
    let supervisor = Supervisor::start_in(app.home());
    supervisor.deploy_ok(&app, "v1");
    let first = wait_for_cert(&pebble, app.listen, "a.apps.example.com");
    let second = served_cert(&pebble, app.listen, "b.apps.example.com").expect("HTTPS");
    assert_eq!(first, second, "one wildcard certificate for both names");
    let record = "_acme-challenge.apps.example.com.";
    wait_until("the record cleaned up", ROLLOUT, || {
        std::fs::read_to_string(&calls).is_ok_and(|c| c.contains("cleanup"))
    });
    let calls = std::fs::read_to_string(&calls).expect("the hook's calls");
    assert_eq!(
        calls,
        format!("present {record} {record}\ncleanup {record} {record}\n")
    );
    let stored = supervisor.state_dir.join("certs");
    assert!(stored.join("_wildcard.apps.example.com.pem").exists());
    assert!(stored.join("_wildcard.apps.example.com.key").exists());
}

#[test]
fn a_failing_dns_hook_is_said_in_one_line_and_the_app_runs_on() {
    let pebble = Pebble::checking(free_port(), free_port(), None);
    let dir = tempfile::tempdir().expect("temp dir");
    let (hook, _) = hook(dir.path(), pebble.dns_management, true);
    let app = acme::app("acme-dns-fail", &[HOST], &dns_spec(&pebble, hook.clone()));
    let supervisor = Supervisor::start_in(app.home());
    supervisor.deploy_ok(&app, "v1");
    let expected = format!(
        "acme, ordering: the dns hook `{} present _acme-challenge.{HOST}.` failed (exit status: 1): provider API: 403 invalid token",
        hook.display()
    );
    wait_until("the hook's failure in status", ISSUE, || {
        supervisor
            .status(&app)
            .certificate
            .is_some_and(|said| said.starts_with(&expected))
    });
    let status = supervisor.status(&app);
    assert!(!status.certificate.unwrap().contains('\n'));
    assert_eq!(status.live_version.as_deref(), Some("v1"));
    // A hook that is not there is refused at deploy, before anything changes.
    let missing = dns_spec(&pebble, dir.path().join("no-such-hook"));
    acme::set(&app, &[HOST], &missing);
    app.place("v2");
    let (kind, message) = error_of(supervisor.deploy(&app, "v2"));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
    assert!(
        message.starts_with("tls.acme.dns_hook of acme-dns-fail") && message.contains("chmod +x"),
        "{message}"
    );
    assert_eq!(supervisor.status(&app).live_version.as_deref(), Some("v1"));
}

#[test]
fn a_ca_that_requires_external_account_binding_gets_one_and_its_absence_is_said() {
    let (kid, key) = (
        "kid-cutover",
        "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
    );
    let http_port = free_port();
    let pebble = Pebble::start(PebbleSetup {
        http_port,
        tls_port: free_port(),
        validity: None,
        eab: Some((kid.to_owned(), key.to_owned())),
    });
    let spec = acme::spec(
        &pebble.directory,
        Some(pebble.api_ca.clone()),
        Challenge::Http01,
        http_port,
    );
    let app = acme::app("acme-eab", &[HOST], &spec);
    let supervisor = Supervisor::start_in(app.home());
    supervisor.deploy_ok(&app, "v1");
    wait_until("the missing binding in status", ISSUE, || {
        supervisor.status(&app).certificate.is_some_and(|said| {
            said.starts_with("acme, ordering: cannot create an account at the ACME directory")
                && said.contains("externalAccountRequired")
        })
    });
    let bound = AcmeSpec {
        eab: Some(Eab {
            kid: kid.to_owned(),
            hmac_key: key.to_owned(),
        }),
        ..spec
    };
    acme::set(&app, &[HOST], &bound);
    app.place("v2");
    supervisor.deploy_ok(&app, "v2");
    wait_for_cert(&pebble, app.listen, HOST);
    assert!(supervisor.log().contains("created an ACME account"));
}

/// Pebble, a front for it, and an app for [`HOST`] on the front's directory answering
/// TLS-ALPN-01 on its own address.
fn behind_a_front(name: &str, validity: Option<u64>) -> (Pebble, CaFront, App) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let pebble = Pebble::checking(free_port(), listen.port(), validity);
    let front = CaFront::start(&pebble);
    let spec = acme::spec(
        &front.directory,
        Some(front.ca.clone()),
        Challenge::TlsAlpn01,
        free_port(),
    );
    let mut app = acme::app(name, &[HOST], &spec);
    app.listen = listen;
    (pebble, front, app)
}

#[test]
fn the_cas_renewal_window_renews_at_once_naming_the_certificate_it_replaces() {
    // A day's lifetime: by a third left, the renewal would be 16 hours away.
    let (pebble, front, app) = behind_a_front("acme-ari", Some(24 * 3600));
    front.first_due_at_once();
    let supervisor = Supervisor::start_in(app.home());
    supervisor.deploy_ok(&app, "v1");
    wait_until("two orders and a later window", ISSUE, || {
        front.asked().len() >= 2
    });
    let orders = front.orders();
    assert_eq!(orders.len(), 2, "{orders:?}");
    let first = front.asked()[0].clone();
    assert_eq!(orders[0].payload.get("replaces"), None);
    assert_eq!(orders[1].payload["replaces"], first.as_str());
    // The certificate served is the second, the one asked about last.
    let served = acme::wait_for_cert(&pebble, app.listen, HOST);
    let der = rustls::pki_types::CertificateDer::from(served);
    let id = instant_acme::CertificateIdentifier::try_from(&der).expect("an ARI id");
    assert_eq!(Some(&id.to_string()), front.asked().last());
    let said = supervisor.status(&app).certificate.expect("said");
    assert!(said.contains("(the CA's window)"), "{said}");
    assert!(supervisor.log().contains("the CA suggests renewing"));
}

#[test]
fn a_rate_limited_order_is_tried_again_no_sooner_than_the_cas_retry_after() {
    let (pebble, front, app) = behind_a_front("acme-limited", None);
    front.refuse_orders(1, 6);
    let supervisor = Supervisor::start_in(app.home());
    supervisor.deploy_ok(&app, "v1");
    wait_until("the rate limit in status", ISSUE, || {
        supervisor.status(&app).certificate.is_some_and(|said| {
            said.starts_with("acme, ordering: the new order") && said.contains("trying again in 6s")
        })
    });
    wait_for_cert(&pebble, app.listen, HOST);
    let orders = front.orders();
    assert!(
        orders.len() >= 2 && orders[0].refused && !orders[1].refused,
        "{orders:?}"
    );
    let waited = orders[1].at - orders[0].at;
    // Without Retry-After the first backoff is 2 s.
    assert!(waited >= Duration::from_millis(5500), "{waited:?}");
}

#[test]
fn an_app_deployed_on_the_challenge_port_while_an_order_is_open_takes_it_over() {
    let http_port = free_port();
    let pebble = Pebble::checking(http_port, free_port(), None);
    let front = CaFront::start(&pebble);
    front.hold_challenges();
    let spec = acme::spec(
        &front.directory,
        Some(front.ca.clone()),
        Challenge::Http01,
        http_port,
    );
    let app = acme::app("acme-port", &[HOST], &spec);
    let supervisor = Supervisor::start_in(app.home());
    supervisor.deploy_ok(&app, "v1");
    wait_until("the challenge announced", ISSUE, || front.held() > 0);
    let port80 = SocketAddr::from(([127, 0, 0, 1], http_port));
    let answer = get(port80, "/").expect("the challenge-only port");
    assert_eq!(answer.status, 404);
    assert!(
        answer.body.contains("only answers ACME challenges"),
        "{}",
        answer.body
    );
    // A plain-HTTP app for every host deployed on that address, mid-order.
    let mut plain = App::new("plain-80");
    plain.listen = port80;
    plain.place("v1");
    supervisor.deploy_ok(&plain, "v1");
    let answer = get(port80, "/").expect("the plain app");
    assert_eq!(answer.status, 200);
    assert!(answer.body.starts_with("hello from v1"), "{}", answer.body);
    // The CA looks now: the plain app's proxy answers the challenge.
    front.release();
    wait_for_cert(&pebble, app.listen, HOST);
    assert_eq!(front.orders().len(), 1);
    let log = supervisor.log();
    assert!(log.contains(&format!(
        "the challenge-only port {port80} goes to the app deployed there"
    )));
}
