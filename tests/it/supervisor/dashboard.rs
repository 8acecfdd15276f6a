//! The dashboard in a real browser: headless chromium opens the admin address of a real
//! supervisor once and, without a reload, sees a deploy go live and a canary's step, share and
//! chart appear, then the promoted canary end. With `CUTOVER_DASHBOARD_SCREENSHOT=PATH` it saves
//! what it shows during the canary as a PNG (the README's picture). The JSON the page polls is
//! checked on its own: the fleet from a real Serf agent, or why there is none, and no writes.

use std::net::SocketAddr;
use std::time::Duration;

use cutover::protocol::{CanaryRequest, DeployRequest, Request, Response};

use crate::support::app::{self, App};
use crate::support::browser::Browser;
use crate::support::load::Load;
use crate::support::request;
use crate::support::serf::{AgentConfig, SerfAgent};
use crate::support::supervisor::{Supervisor, ROLLOUT};
use crate::support::{free_port, wait_until};

/// The page polls every second; a loaded machine may take a few more to deploy and to draw.
const SHOWN: Duration = Duration::from_secs(30);

#[test]
fn a_deploy_and_a_canary_step_appear_on_the_open_page() {
    let app = App::new("shop");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let supervisor = Supervisor::start_with(app.home(), |command| {
        command.arg("--metrics-listen").arg(admin.to_string());
    });
    for version in ["v1", "v2", "v3"] {
        app.place(version);
    }
    supervisor.deploy_ok(&app, "v1");
    app.wait_serving("v1");

    let browser = Browser::start();
    browser.open(&format!("http://{admin}/"));
    let shop = r#"[data-app="shop"]"#;
    browser.wait_for_text(&format!("{shop} .live-version"), "v1", SHOWN);
    // Gone if the page is loaded again: proof that what follows came by polling.
    browser.run("window.cutoverTestMark = 'same page'; return null;");

    supervisor.deploy_ok(&app, "v2");
    browser.wait_for_text(&format!("{shop} .live-version"), "v2", SHOWN);
    browser.wait_for_text(
        &format!(r#"{shop} tr[data-version="v2"][data-kind="deploy"] .outcome"#),
        "live",
        SHOWN,
    );

    // A canary that waits for the operator after its last step, so the page can be read at
    // leisure; under load, so the judge has figures to draw.
    let load = Load::start(app.listen, 4, "/");
    load.wait_for_more_ok(100, ROLLOUT);
    let mut spec = app.spec("v3");
    app::canary(&mut spec, &["10%", "50%"], Duration::from_secs(1), 50);
    spec.canary.auto_promote = false;
    spec.canary.max_p99_ratio = 10.0;
    let canary = Request::Deploy(DeployRequest {
        app: spec,
        version: "v3".to_owned(),
        dest: app.dest.clone(),
    });
    std::thread::scope(|scope| {
        let deploy = scope.spawn(|| supervisor.request(canary));
        let running = format!(r#"{shop} .canary[data-running="yes"]"#);
        browser.wait_for_text(&format!("{running} .canary-version"), "v3", SHOWN);
        browser.wait_for_text(&format!("{running} .canary-step"), "2/2", SHOWN);
        browser.wait_for_text(&format!("{running} .canary-share"), "50%", SHOWN);
        wait_until(
            "the canary's charts to have points on both sides",
            SHOWN,
            || {
                let points: usize = browser
                    .attr(&format!("{running} svg.chart"), "data-points")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                points >= 4
                    && browser.count(&format!("{running} svg.chart polyline.side-canary")) >= 2
                    && browser.count(&format!("{running} svg.chart polyline.side-stable")) >= 2
            },
        );
        if let Some(path) = std::env::var_os("CUTOVER_DASHBOARD_SCREENSHOT") {
            // The picture once the last step is judged and drawn whole.
            let waiting = format!("waiting for `cutover promote {}`", app.name);
            wait_until("the canary to wait for the operator", ROLLOUT, || {
                supervisor.status(&app).phase.contains(&waiting)
            });
            browser.wait_for_text(
                &format!("{shop} .phase"),
                &supervisor.status(&app).phase,
                SHOWN,
            );
            browser.screenshot(std::path::Path::new(&path));
        }
        let promote = Request::Promote(CanaryRequest {
            app: app.name.clone(),
        });
        assert!(
            matches!(supervisor.request(promote), Response::Decided(_)),
            "the canary takes the promote"
        );
        let answer = deploy.join().expect("the deploy thread");
        assert!(matches!(answer, Response::Deployed(_)), "{answer:?}");
    });
    browser.wait_for_text(&format!("{shop} .live-version"), "v3", SHOWN);
    browser.wait_for_text(
        &format!(r#"{shop} .canary[data-running="no"] .canary-version"#),
        "v3",
        SHOWN,
    );
    load.stop();

    assert_eq!(
        browser.run("return window.cutoverTestMark || null;"),
        serde_json::json!("same page"),
        "the page was loaded again"
    );
    let strays = browser.quit();
    assert!(
        strays.is_empty(),
        "chromium processes left running: {strays:?}"
    );
}

#[test]
fn the_fleet_shows_when_serf_answers_and_says_why_when_it_does_not() {
    let home = tempfile::tempdir().expect("temp dir");
    let agent = SerfAgent::start(&AgentConfig {
        name: "node-a".to_owned(),
        log: home.path().join("serf.log"),
        ..AgentConfig::default()
    });
    for dir in ["a", "b"] {
        std::fs::create_dir(home.path().join(dir)).expect("a home for a supervisor");
    }
    let with_serf = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _supervisor = Supervisor::start_with(&home.path().join("a"), |command| {
        command
            .arg("--metrics-listen")
            .arg(with_serf.to_string())
            .env("SERF_RPC_ADDR", &agent.rpc);
    });
    let fleet = json_at(with_serf, "/api/fleet");
    assert_eq!(fleet["serf"], true, "{fleet}");
    let row = &fleet["rows"][0];
    assert_eq!(
        (&row["node"], &row["status"]),
        (&"node-a".into(), &"alive".into()),
        "{fleet}"
    );

    // The page finds Serf and shows the table.
    let browser = Browser::start();
    browser.open(&format!("http://{with_serf}/"));
    browser.wait_for_text(r#"#fleet tr[data-node="node-a"] td"#, "node-a", SHOWN);
    let strays = browser.quit();
    assert!(
        strays.is_empty(),
        "chromium processes left running: {strays:?}"
    );

    // Nothing listens where this supervisor looks for Serf.
    let without = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _alone = Supervisor::start_with(&home.path().join("b"), |command| {
        command
            .arg("--metrics-listen")
            .arg(without.to_string())
            .env("SERF_RPC_ADDR", format!("127.0.0.1:{}", free_port()));
    });
    let fleet = json_at(without, "/api/fleet");
    assert_eq!(fleet["serf"], false, "{fleet}");
    let why = fleet["error"].as_str().unwrap_or_default();
    assert!(why.contains("serf members"), "{fleet}");

    // Read-only: the page's data is not a door to change anything.
    let status = json_at(without, "/api/status");
    assert_eq!(status["apps"], serde_json::json!([]), "{status}");
    let post = request::Request::new("POST", "/api/status")
        .send(without)
        .expect("an answer");
    assert_eq!(post.status, 405, "{post:?}");
}

/// The JSON document the admin address serves at `path`.
fn json_at(admin: SocketAddr, path: &str) -> serde_json::Value {
    let answer = request::get(admin, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(answer.status, 200, "{answer:?}");
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", answer.body))
}
