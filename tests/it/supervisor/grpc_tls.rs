//! gRPC to instances over TLS (`upstream: h2`): the proxy verifies each instance's certificate
//! against the app's `upstream_tls.ca` for `localhost` and speaks HTTP/2 over it; messages and
//! trailers pass and a blue-green deploy under a load of calls fails none; an instance whose
//! certificate the CA does not vouch for, or that is for another name, is never healthy, the
//! deploy fails saying why and the old release keeps serving; a CA that cannot be read refuses
//! the deploy in one line before anything starts. The instances are the demo app with
//! `--tls-cert`/`--tls-key` (HTTP/2 over TLS only), their certificates made by the real openssl.

use std::path::PathBuf;
use std::time::Duration;

use cutover::protocol::app::{Upstream, UpstreamTlsSpec};
use cutover::protocol::{AppSpec, ErrorKind, ReleaseState};

use crate::support::app::App;
use crate::support::control_socket::{error_of, state_of};
use crate::support::grpc;
use crate::support::supervisor::ROLLOUT;
use crate::support::tls::{Leaf, TestCa};

/// The app's CA, and the instances' certificates: one it signed for `localhost`, one a CA of
/// the same name but another key signed, one it signed for another name.
struct Certs {
    ca: PathBuf,
    trusted: Leaf,
    impostor: Leaf,
    misnamed: Leaf,
    _dir: tempfile::TempDir,
}

impl Certs {
    /// Makes them, and points the spec of `app` at the CA (see [`grpc_over_tls`]).
    fn for_app(app: &App) -> Certs {
        let dir = tempfile::tempdir().expect("temp dir for the certificates");
        let ca = TestCa::new(&dir.path().join("ca"));
        let stranger = TestCa::new(&dir.path().join("stranger"));
        std::env::set_var(ca_var(&app.name), &ca.cert);
        Certs {
            trusted: ca.issue("instance", &["localhost"]),
            impostor: stranger.issue("instance", &["localhost"]),
            misnamed: ca.issue("misnamed", &["other.test"]),
            ca: ca.cert.clone(),
            _dir: dir,
        }
    }
}

/// The demo-app flags that serve `leaf` (HTTP/2 over TLS only).
fn serving(leaf: &Leaf) -> String {
    format!(
        "--tls-cert {} --tls-key {}",
        leaf.cert.display(),
        leaf.key.display()
    )
}

/// A spec tweak is a plain `fn`: it finds the app's CA through the test process's environment
/// (`CUTOVER_TEST_UPSTREAM_CA_<APP>`), which the supervisor never reads.
fn ca_var(app: &str) -> String {
    format!("CUTOVER_TEST_UPSTREAM_CA_{}", app.to_uppercase())
}

/// `upstream: h2` with the app's CA (server name: the default, `localhost`), and h2c for the
/// test's client at the front.
fn grpc_over_tls(spec: &mut AppSpec) {
    let var = ca_var(&spec.name);
    let ca = std::env::var(&var).unwrap_or_else(|_| panic!("{var} is set by the test"));
    spec.h2c = true;
    spec.upstream = Upstream::H2;
    spec.upstream_tls = Some(UpstreamTlsSpec {
        ca: Some(ca.into()),
        server_name: None,
    });
}

/// `app` speaks gRPC over TLS to its instances, and v1 and v2 both serve the certificate its
/// CA signed for `localhost`.
fn trusted_releases(app: &mut App, certs: &Certs) {
    app.tweak = grpc_over_tls;
    app.faults = ["v1", "v2"]
        .map(|v| (v.to_owned(), serving(&certs.trusted)))
        .to_vec();
}

#[test]
fn grpc_calls_over_tls_to_the_instances_pass_with_trailers_and_a_blue_green_deploy_fails_none() {
    let mut app = App::new("h2echo");
    let certs = Certs::for_app(&app);
    trusted_releases(&mut app, &certs);
    let supervisor = app.serving(&["v1", "v2"]);

    grpc::echo_then_blue_green_under_load(&app, &supervisor);
}

#[test]
fn an_instance_the_ca_does_not_vouch_for_never_gets_a_call_and_the_old_release_keeps_serving() {
    let mut app = App::new("h2reject");
    let certs = Certs::for_app(&app);
    app.tweak = |spec| {
        grpc_over_tls(spec);
        spec.health.deadline = Duration::from_secs(4);
    };
    app.faults = vec![
        ("v1".to_owned(), serving(&certs.trusted)),
        ("v2".to_owned(), serving(&certs.impostor)),
        ("v3".to_owned(), serving(&certs.misnamed)),
    ];
    let supervisor = app.serving(&["v1", "v2", "v3"]);
    let load = grpc::load(app.listen, 4);
    load.wait_for_more_answers(50, ROLLOUT);

    for (version, words) in [
        ("v2", "invalid peer certificate: BadSignature"),
        ("v3", "certificate not valid for name \"localhost\""),
    ] {
        let (kind, message) = error_of(supervisor.deploy(&app, version));
        assert_eq!(kind, ErrorKind::DeployFailed, "{message}");
        assert!(message.contains(words), "{version}: {message}");
        assert!(
            message.contains(&format!("trusting the CA in {}", certs.ca.display())),
            "{message}"
        );
        load.wait_for_more_answers(50, ROLLOUT);
    }
    let report = load.stop();
    assert_eq!(report.failures(), 0, "{report:?}");
    let releases = supervisor.releases(&app);
    assert_eq!(state_of(&releases, "v1"), Some(ReleaseState::Live));
    let live = supervisor.status(&app).instances;
    assert!(live.iter().all(|i| i.version == "v1"), "{live:?}");
}

#[test]
fn a_deploy_naming_a_ca_that_cannot_be_read_is_refused_in_one_line() {
    let mut app = App::new("h2noca");
    let certs = Certs::for_app(&app);
    trusted_releases(&mut app, &certs);
    let supervisor = app.serving(&["v1", "v2"]);

    let moved = certs.ca.with_extension("moved");
    std::fs::rename(&certs.ca, &moved).expect("take the CA away");
    let (kind, message) = error_of(supervisor.deploy(&app, "v2"));
    assert_eq!(kind, ErrorKind::BadRequest, "{message}");
    let expected = format!(
        "upstream_tls.ca of h2noca: cannot read {}: No such file or directory",
        certs.ca.display()
    );
    assert!(message.starts_with(&expected), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");

    // Nothing changed: v1 serves, over the connections the proxy had.
    let releases = supervisor.releases(&app);
    assert_eq!(state_of(&releases, "v1"), Some(ReleaseState::Live));
    assert_ne!(state_of(&releases, "v2"), Some(ReleaseState::Live));
    let reply = grpc::call(app.listen, b"still there").expect("v1 answers");
    assert_eq!(reply.status, 0, "{reply:?}");
}
