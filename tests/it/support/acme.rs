//! An app whose certificate comes over ACME, as the ACME tests deploy it: its `tls.acme` and
//! `hosts` set for each deploy, and the certificate its HTTPS address serves, seen by a client
//! that trusts only the CA's root and validates the chain as a browser does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cutover::protocol::app::TlsSpec;
use cutover::protocol::tls::{AcmeSpec, Challenge};

use super::app::App;
use super::pebble::Pebble;
use super::tls::get;
use super::wait_until;

/// The name the tests' apps serve unless a test gives others.
pub const HOST: &str = "shop.example.com";

/// How long a CA may take to issue, on a loaded 2-core box.
pub const ISSUE: Duration = Duration::from_secs(90);

/// A `tls.acme` section for `directory`: `ca` trusted for its HTTPS, `challenge` answered
/// (HTTP-01 on `http_port`), a contact, nothing else.
pub fn spec(
    directory: &str,
    ca: Option<PathBuf>,
    challenge: Challenge,
    http_port: u16,
) -> AcmeSpec {
    AcmeSpec {
        directory: directory.to_owned(),
        contact: vec!["mailto:ops@example.com".to_owned()],
        challenge,
        dns_hook: None,
        dns_wait: None,
        eab: None,
        ca,
        http_listen: Some(format!("127.0.0.1:{http_port}")),
    }
}

/// An app named `name` serving `hosts`, its certificates ordered as `acme` says; v1 placed.
pub fn app(name: &str, hosts: &[&str], acme: &AcmeSpec) -> App {
    let mut app = App::new(name);
    set(&app, hosts, acme);
    app.tweak = from_env;
    app.place("v1");
    app
}

/// What `app`'s next deploys carry as hosts and `tls.acme`.
pub fn set(app: &App, hosts: &[&str], acme: &AcmeSpec) {
    let section = serde_json::json!({ "hosts": hosts, "acme": acme });
    std::env::set_var(var(&app.name), section.to_string());
}

/// A spec tweak is a plain `fn`, so the section comes from the test process's environment
/// (`CUTOVER_TEST_ACME_<APP>`, JSON), set by [`set`].
fn from_env(spec: &mut cutover::protocol::AppSpec) {
    let var = var(&spec.name);
    let json = std::env::var(&var).unwrap_or_else(|_| panic!("{var} is set by the test"));
    let section: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    spec.hosts = serde_json::from_value(section["hosts"].clone()).expect("hosts");
    spec.tls = Some(TlsSpec {
        cert: None,
        key: None,
        acme: Some(serde_json::from_value(section["acme"].clone()).expect("an AcmeSpec")),
        hsts: None,
        redirect_from: None,
    });
}

fn var(app: &str) -> String {
    format!("CUTOVER_TEST_ACME_{}", app.to_uppercase().replace('-', "_"))
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The certificate (DER) a new HTTPS connection to `addr` naming `host` gets, once the answer
/// is the demo app's.
pub fn served_cert(pebble: &Pebble, addr: SocketAddr, host: &str) -> Result<Vec<u8>, String> {
    let client = pebble.client(addr, host);
    let url = format!("https://{host}:{}/", addr.port());
    let (status, _, body, cert) = runtime().block_on(get(&client, &url))?;
    if status != 200 || !body.starts_with("hello from v") {
        return Err(format!("{status}: {body}"));
    }
    cert.ok_or_else(|| "no peer certificate".to_owned())
}

/// Waits for the first certificate served for `host`.
pub fn wait_for_cert(pebble: &Pebble, addr: SocketAddr, host: &str) -> Vec<u8> {
    let mut cert = None;
    wait_until(
        &format!("a certificate for {host} from pebble"),
        ISSUE,
        || {
            cert = served_cert(pebble, addr, host).ok();
            cert.is_some()
        },
    );
    cert.expect("served")
}
