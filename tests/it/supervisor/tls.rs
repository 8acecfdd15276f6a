//! HTTPS and HTTP/2 at the front door: certificates from files chosen by SNI among the apps on
//! one address, HTTP/2 offered by ALPN (and h2c on request), a certificate replaced on disk
//! while clients keep sending, blue-green deploys and hand-overs under HTTPS load, and a
//! certificate that cannot be served refused before anything starts, and the redirect from a
//! plain-HTTP address. The clients trust only the test's own CA (made by the real openssl) and
//! validate the chain as a browser does.

use std::path::Path;
use std::time::Duration;

use cutover::protocol::app::TlsSpec;
use cutover::protocol::ErrorKind;

use crate::support::app::App;
use crate::support::control_socket::error_of;
use crate::support::load::LoadReport;
use crate::support::supervisor::{Supervisor, ROLLOUT};
use crate::support::tls::{self, der_of, get, Leaf, TestCa};
use crate::support::wait_until;

/// `shop` on `shop.test` (HSTS one day) and `blog` on `*.blog.test`, each with its own
/// certificate, on one HTTPS address, both serving their first version.
struct Site {
    ca: TestCa,
    shop: App,
    blog: App,
    supervisor: Supervisor,
    _certs: tempfile::TempDir,
}

/// The files an app's certificate is read from, set by each test before its deploy: a spec
/// tweak is a plain `fn`, so it finds them through the environment of the test's own process
/// (`CUTOVER_TEST_CERTS_<APP>`), which the supervisor never reads.
fn tls_from_env(spec: &mut cutover::protocol::AppSpec) {
    let var = format!(
        "CUTOVER_TEST_CERTS_{}",
        spec.name.to_uppercase().replace('-', "_")
    );
    let dir = std::env::var(&var).unwrap_or_else(|_| panic!("{var} is set by the test"));
    let dir = Path::new(&dir);
    spec.tls = Some(TlsSpec {
        cert: Some(dir.join(format!("{}.pem", spec.name))),
        key: Some(dir.join(format!("{}.key", spec.name))),
        acme: None,
        hsts: spec
            .name
            .ends_with("shop")
            .then(|| Duration::from_secs(86_400)),
        redirect_from: std::env::var(format!(
            "CUTOVER_TEST_REDIRECT_{}",
            spec.name.to_uppercase()
        ))
        .ok(),
    });
}

impl Site {
    fn start(prefix: &str) -> Site {
        let certs = tempfile::tempdir().expect("temp dir for the certificates");
        let ca = TestCa::new(certs.path());
        let mut shop = App::new(&format!("{prefix}shop"));
        let mut blog = App::new(&format!("{prefix}blog"));
        blog.listen = shop.listen;
        ca.issue(&shop.name, &["shop.test"]);
        ca.issue(&blog.name, &["*.blog.test"]);
        for app in [&shop, &blog] {
            let var = format!("CUTOVER_TEST_CERTS_{}", app.name.to_uppercase());
            std::env::set_var(var, certs.path());
        }
        shop.tweak = |spec| {
            spec.hosts = vec!["shop.test".into()];
            tls_from_env(spec);
        };
        blog.tweak = |spec| {
            spec.hosts = vec!["*.blog.test".into()];
            tls_from_env(spec);
        };
        let supervisor = Supervisor::start_in(shop.home());
        for version in ["v1", "v2"] {
            shop.place(version);
            blog.place(version);
        }
        supervisor.deploy_ok(&shop, "v1");
        supervisor.deploy_ok(&blog, "v1");
        Site {
            ca,
            shop,
            blog,
            supervisor,
            _certs: certs,
        }
    }

    fn client(&self, http1: bool) -> reqwest::Client {
        self.ca
            .client(self.shop.listen, &["shop.test", "www.blog.test"], http1)
    }

    fn url(&self, host: &str) -> String {
        format!("https://{host}:{}/", self.shop.listen.port())
    }

    fn leaf(&self, app: &App) -> Leaf {
        Leaf {
            cert: self.ca.dir.join(format!("{}.pem", app.name)),
            key: self.ca.dir.join(format!("{}.key", app.name)),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn assert_clean(report: &LoadReport, who: &str) {
    assert_eq!(report.failures(), 0, "{who}: {report:?}");
    assert!(report.ok > 0, "{who}: {report:?}");
}

#[test]
fn two_https_apps_on_one_address_get_their_own_certificate_by_sni_over_h2_and_http1() {
    let site = Site::start("t");
    let rt = runtime();
    let h2 = site.client(false);
    let (status, version, body, cert) = rt
        .block_on(get(&h2, &site.url("shop.test")))
        .expect("HTTPS to shop");
    assert_eq!((status, version), (200, reqwest::Version::HTTP_2), "{body}");
    assert!(body.starts_with("hello from v1"), "{body}");
    assert_eq!(
        cert,
        Some(der_of(&site.leaf(&site.shop).cert)),
        "shop's certificate"
    );
    let (status, version, body, cert) = rt
        .block_on(get(&site.client(true), &site.url("www.blog.test")))
        .expect("HTTPS/1.1 to blog");
    assert_eq!(
        (status, version),
        (200, reqwest::Version::HTTP_11),
        "{body}"
    );
    assert_eq!(
        cert,
        Some(der_of(&site.leaf(&site.blog).cert)),
        "blog's certificate"
    );

    // HSTS is shop's, not blog's.
    let hsts = |url: String| {
        rt.block_on(async {
            let response = h2.get(url).send().await.expect("an answer");
            response
                .headers()
                .get("strict-transport-security")
                .map(|v| v.to_str().unwrap().to_owned())
        })
    };
    assert_eq!(
        hsts(site.url("shop.test")).as_deref(),
        Some("max-age=86400")
    );
    assert_eq!(hsts(site.url("www.blog.test")), None);

    // A client that does not trust the CA is refused by its own chain check.
    let stranger = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .resolve("shop.test", site.shop.listen)
        .build()
        .expect("a client");
    let err = rt
        .block_on(get(&stranger, &site.url("shop.test")))
        .expect_err("an untrusted chain");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Blue-green under HTTP/2 and HTTP/1.1 load: no request fails.
    let h2_load = tls::load(site.client(false), &site.url("shop.test"), 4);
    let h1_load = tls::load(site.client(true), &site.url("www.blog.test"), 2);
    h2_load.wait_for_more_ok(50, ROLLOUT);
    h1_load.wait_for_more_ok(20, ROLLOUT);
    site.supervisor.deploy_ok(&site.shop, "v2");
    site.supervisor.deploy_ok(&site.blog, "v2");
    h2_load.wait_for_more_ok(50, ROLLOUT);
    h1_load.wait_for_more_ok(20, ROLLOUT);
    let (h2_report, h1_report) = (h2_load.stop(), h1_load.stop());
    assert_clean(&h2_report, "HTTP/2 to shop");
    assert_clean(&h1_report, "HTTP/1.1 to blog");
    assert!(h2_report.versions.contains_key("v2"), "{h2_report:?}");
}

#[test]
fn a_certificate_replaced_on_disk_is_served_without_a_restart_and_no_request_fails() {
    let site = Site::start("r");
    let load = tls::load(site.client(false), &site.url("shop.test"), 3);
    let fresh = tls::load(site.client(true), &site.url("shop.test"), 1);
    load.wait_for_more_ok(30, ROLLOUT);

    // The renewed certificate is written beside the old files, then renamed over them (key
    // first, as a renewal hook would): for a moment the two do not go together, which the
    // supervisor must ride out on the old certificate.
    let renewed = site.ca.issue("renewed", &["shop.test", "www.shop.test"]);
    let live = site.leaf(&site.shop);
    std::fs::rename(&renewed.key, &live.key).expect("swap in the key");
    std::fs::rename(&renewed.cert, &live.cert).expect("swap in the certificate");
    let new_der = der_of(&live.cert);
    let rt = runtime();
    wait_until(
        "new connections to get the renewed certificate",
        ROLLOUT,
        || {
            // A new client, so a new connection and a new handshake.
            let client = site.client(true);
            rt.block_on(get(&client, &site.url("shop.test")))
                .is_ok_and(|(_, _, _, cert)| cert.as_deref() == Some(&new_der[..]))
        },
    );
    load.wait_for_more_ok(30, ROLLOUT);
    assert_clean(&load.stop(), "HTTP/2 during the renewal");
    assert_clean(&fresh.stop(), "HTTP/1.1 during the renewal");
    let log = site.supervisor.log();
    assert!(log.contains("reloaded the certificate"), "{log}");
}

#[test]
fn a_hand_over_with_tls_and_http2_connections_open_loses_no_request() {
    let mut site = Site::start("h");
    let pids = site.supervisor.live_pids(&site.shop);
    let h2_load = tls::load(site.client(false), &site.url("shop.test"), 4);
    let h1_load = tls::load(site.client(true), &site.url("www.blog.test"), 2);
    h2_load.wait_for_more_ok(30, ROLLOUT);
    for _ in 0..2 {
        site.supervisor.take_over();
        h2_load.wait_for_more_ok(30, ROLLOUT);
        h1_load.wait_for_more_ok(10, ROLLOUT);
    }
    assert_clean(&h2_load.stop(), "HTTP/2 across hand-overs");
    assert_clean(&h1_load.stop(), "HTTP/1.1 across hand-overs");
    assert_eq!(
        site.supervisor.live_pids(&site.shop),
        pids,
        "instances stay"
    );
}

#[test]
fn a_certificate_that_cannot_be_served_is_refused_before_the_deploy() {
    let site = Site::start("b");
    let rt = runtime();
    // The key of another certificate.
    let other = site.ca.issue("other", &["other.test"]);
    let live = site.leaf(&site.shop);
    std::fs::copy(&live.key, site.ca.dir.join("kept.key")).expect("keep the key");
    std::fs::copy(&other.key, &live.key).expect("a key of another certificate");
    let (kind, message) = error_of(site.supervisor.deploy(&site.shop, "v2"));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
    assert!(message.starts_with("tls of bshop: the key"), "{message}");
    assert!(
        message.contains("does not go with the certificate"),
        "{message}"
    );
    std::fs::remove_file(&live.key).expect("remove the key");
    let (kind, message) = error_of(site.supervisor.deploy(&site.shop, "v2"));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
    assert!(
        message.contains("cannot read") && message.contains("bshop.key"),
        "{message}"
    );
    std::fs::copy(site.ca.dir.join("kept.key"), &live.key).expect("put the key back");

    // An app without TLS cannot join an HTTPS address.
    let mut plain = App::new("plain");
    plain.listen = site.shop.listen;
    plain.tweak = |spec| spec.hosts = vec!["plain.test".into()];
    plain.place("p1");
    let (kind, message) = error_of(site.supervisor.deploy(&plain, "p1"));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
    assert!(
        message.contains("has tls; an address is HTTPS or not, so give plain a tls section"),
        "{message}"
    );

    // Nothing changed: v1 serves, with its certificate.
    let (status, _, body, cert) = rt
        .block_on(get(&site.client(false), &site.url("shop.test")))
        .expect("HTTPS to shop");
    assert_eq!(status, 200);
    assert!(body.starts_with("hello from v1"), "{body}");
    assert_eq!(cert, Some(der_of(&live.cert)));
}

#[test]
fn h2c_on_request_serves_http2_without_tls_beside_http1() {
    let mut app = App::new("grpcish");
    app.tweak = |spec| spec.h2c = true;
    let _supervisor = app.serving(&["v1"]);
    let rt = runtime();
    let url = format!("http://127.0.0.1:{}/", app.listen.port());
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("an h2c client");
    let (status, version, body, _) = rt.block_on(get(&h2c, &url)).expect("h2c");
    assert_eq!((status, version), (200, reqwest::Version::HTTP_2), "{body}");
    assert!(body.starts_with("hello from v1"), "{body}");
    let h1 = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("an HTTP/1.1 client");
    let (status, version, _, _) = rt.block_on(get(&h1, &url)).expect("HTTP/1.1");
    assert_eq!((status, version), (200, reqwest::Version::HTTP_11));
}

#[test]
fn a_plain_http_address_redirects_the_apps_hosts_to_https_across_a_hand_over() {
    let redirect = std::net::SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()));
    std::env::set_var("CUTOVER_TEST_REDIRECT_XSHOP", redirect.to_string());
    let mut site = Site::start("x");
    let port = site.shop.listen.port();
    let ask = |host: &str| {
        crate::support::request::Request::get("/?item=7")
            .header("host", host)
            .send(redirect)
            .unwrap_or_else(|e| panic!("GET for {host} on {redirect}: {e}"))
    };
    let answer = ask("shop.test:80");
    assert_eq!(answer.status, 308, "{answer:?}");
    let location = format!("https://shop.test:{port}/?item=7");
    assert_eq!(
        answer.header("location"),
        Some(location.as_str()),
        "{answer:?}"
    );
    // Only the hosts of the app that asked for it.
    assert_eq!(ask("www.blog.test").status, 404);
    // The redirected URL serves.
    let rt = runtime();
    let (status, _, body, _) = rt
        .block_on(get(&site.client(false), &location))
        .expect("HTTPS after the redirect");
    assert_eq!(status, 200, "{body}");

    site.supervisor.take_over();
    let answer = ask("shop.test");
    assert_eq!(answer.status, 308, "after the hand-over: {answer:?}");

    // Moving the redirect takes a new start of the app: refused, in one line.
    std::env::set_var("CUTOVER_TEST_REDIRECT_XSHOP", "127.0.0.1:1");
    let (kind, message) = error_of(site.supervisor.deploy(&site.shop, "v2"));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
    assert!(
        message.contains("tls.redirect_from of xshop changes from"),
        "{message}"
    );
    std::env::set_var("CUTOVER_TEST_REDIRECT_XSHOP", redirect.to_string());
    site.supervisor.deploy_ok(&site.shop, "v2");
    assert_eq!(ask("shop.test").status, 308);
}
