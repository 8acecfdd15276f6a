//! `supervise --metrics-listen`: the admin address's `/metrics`, scraped over real HTTP after
//! real traffic through the proxy, linted by `promtool check metrics` and read with a real
//! text-format parser; off unless asked for; never an app's address; across a hand-over; and the
//! agent's textfile after a deploy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cutover::protocol::{CanaryRequest, Request as ControlRequest, Response};

use crate::support::app::App;
use crate::support::control_socket::error_of;
use crate::support::free_port;
use crate::support::metrics::{
    histogram, listen_on, parse, promtool_check, scrape, scrape_text, value,
};
use crate::support::procs::listening_tcp_ports;
use crate::support::request::{self, Request};
use crate::support::supervisor::{Supervisor, ROLLOUT};
use crate::support::wait_until;

fn admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A supervisor with its admin address at `admin`, in the app's home, `v1` serving.
fn serving_with_metrics(app: &App, admin: SocketAddr) -> Supervisor {
    let supervisor = Supervisor::start_with(app.home(), listen_on(admin));
    app.place("v1");
    supervisor.deploy_ok(app, "v1");
    app.wait_serving("v1");
    supervisor
}

const V1_STABLE: [(&str, &str); 3] = [("app", "shop"), ("release", "v1"), ("slot", "stable")];

/// `cutover_requests_total` of v1's stable slot for `class`.
fn requests(scrape: &prometheus_parse::Scrape, class: &str) -> f64 {
    let [app, release, slot] = V1_STABLE;
    value(
        scrape,
        "cutover_requests_total",
        &[app, release, slot, ("class", class)],
    )
}

#[test]
fn scraped_counts_are_the_requests_sent_by_class_and_pass_promtool() {
    let mut app = App::new("shop");
    // Every fourth `GET /` is a 500, exactly.
    app.faults = vec![("v1".into(), "--error-rate 0.25".into())];
    let admin = admin_address();
    let supervisor = serving_with_metrics(&app, admin);

    let before = scrape(admin);
    let mut sent: BTreeMap<String, f64> = BTreeMap::new();
    let mut body_bytes = 0.0;
    // A path with slashes and a query: none of it may become a label.
    for path in ["/"; 16].into_iter().chain(["/missing/a/b?c=/d"; 3]) {
        let answer = request::get(app.listen, path).expect("an answer through the proxy");
        body_bytes += answer.body.len() as f64;
        *sent
            .entry(format!("{}xx", answer.status / 100))
            .or_default() += 1.0;
    }
    assert_eq!(sent.get("5xx"), Some(&4.0), "the demo app's 500s: {sent:?}");
    assert_eq!(sent.get("4xx"), Some(&3.0), "{sent:?}");

    let text = scrape_text(admin).expect("a scrape");
    promtool_check(&text).unwrap_or_else(|lint| panic!("promtool: {lint}\n{text}"));
    let after = parse(&text);
    for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
        let counted = requests(&after, class) - requests(&before, class);
        let expected = sent.get(class).copied().unwrap_or(0.0);
        assert_eq!(counted, expected, "{class}: sent {sent:?}\n{text}");
    }
    let (count_before, _) = histogram(&before, "cutover_request_duration_seconds", &V1_STABLE);
    let (count, buckets) = histogram(&after, "cutover_request_duration_seconds", &V1_STABLE);
    assert_eq!(
        count - count_before,
        19.0,
        "one observation per request\n{text}"
    );
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "buckets ascend and are cumulative: {buckets:?}"
    );
    let bounds: Vec<f64> = buckets.iter().map(|b| b.0).collect();
    assert_eq!(
        bounds,
        [
            0.005,
            0.01,
            0.025,
            0.05,
            0.1,
            0.25,
            0.5,
            1.0,
            2.5,
            5.0,
            10.0,
            f64::INFINITY
        ],
        "Prometheus' standard buckets"
    );

    // Counted when each body is let go of, just after its last byte went out.
    let bytes = "cutover_response_bytes_total";
    let bytes_before = value(&before, bytes, &V1_STABLE);
    wait_until("every answer's body bytes counted", ROLLOUT, || {
        value(&scrape(admin), bytes, &V1_STABLE) - bytes_before == body_bytes
    });
    assert!(body_bytes > 0.0);

    let deploys = [("app", "shop"), ("outcome", "succeeded")];
    assert_eq!(value(&after, "cutover_deploys_total", &deploys), 1.0);
    let v1 = [("app", "shop"), ("release", "v1")];
    assert_eq!(value(&after, "cutover_instance_healthy", &v1), 1.0);
    assert_eq!(value(&after, "cutover_instance_restarts_total", &v1), 0.0);
    assert_eq!(value(&after, "cutover_app_live_release", &v1), 1.0);
    assert_eq!(value(&after, "cutover_requests_in_flight", &V1_STABLE), 0.0);
    for sample in &after.samples {
        for (name, label) in sample.labels.iter() {
            assert!(
                !label.contains('/') && !label.contains('?'),
                "{} has a path in its label {name}={label:?}",
                sample.metric
            );
        }
    }

    let unknown = request::get(admin, "/metrics/x").expect("an answer");
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let post = Request::new("POST", "/metrics")
        .send(admin)
        .expect("an answer");
    assert_eq!(post.status, 405, "{post:?}");
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    drop(supervisor);
}

#[test]
fn metrics_are_off_unless_asked_for() {
    let supervisor = Supervisor::start();
    assert_eq!(
        listening_tcp_ports(supervisor.pid()),
        Vec::<u16>::new(),
        "a supervisor without apps or --metrics-listen listens on no TCP port"
    );
    drop(supervisor);

    let admin = admin_address();
    let home = tempfile::tempdir().expect("temp dir");
    let supervisor = Supervisor::start_with(home.path(), |command| {
        command.env("CUTOVER_METRICS_LISTEN", admin.to_string());
    });
    assert_eq!(listening_tcp_ports(supervisor.pid()), vec![admin.port()]);
    scrape(admin);
}

#[test]
fn no_app_listens_on_the_admin_address_and_no_admin_address_on_an_app() {
    let mut app = App::new("shop");
    let admin = admin_address();
    let supervisor = Supervisor::start_with(app.home(), listen_on(admin));
    app.place("v1");
    let own_listen = app.listen;
    app.listen = admin;
    let (_, message) = error_of(supervisor.deploy(&app, "v1"));
    assert!(
        message.contains("admin address") && message.contains(&admin.to_string()),
        "{message}"
    );
    scrape(admin);

    // The other way round: an admin address that an app already listens on.
    app.listen = own_listen;
    supervisor.deploy_ok(&app, "v1");
    let mut supervisor = supervisor;
    supervisor.stop();
    let (status, log) = supervisor.start_refused(listen_on(own_listen));
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!("is app shop's public address ({own_listen})")),
        "{log}"
    );
}

#[test]
fn a_hand_over_keeps_the_address_counts_itself_and_starts_the_counters_afresh() {
    let app = App::new("shop");
    let admin = admin_address();
    let mut supervisor = serving_with_metrics(&app, admin);
    for _ in 0..4 {
        app.get().expect("a 200");
    }
    let before = scrape(admin);
    assert_eq!(value(&before, "cutover_handovers_total", &[]), 0.0);
    let started = value(&before, "process_start_time_seconds", &[]);
    assert!(requests(&before, "2xx") >= 4.0);

    // Scrapes on new connections all through the hand-over: none may be refused.
    let done = AtomicBool::new(false);
    /// Ends the scrapes however the hand-over ends (a failed one panics).
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let (scraped, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                match scrape_text(admin) {
                    Ok(_) => scraped.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("scrape during the hand-over: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
        let _done = Done(&done);
        supervisor.take_over_with(listen_on(admin));
    });
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "scrapes failed during the hand-over"
    );
    assert!(scraped.load(Ordering::Relaxed) > 0);

    let after = scrape(admin);
    assert_eq!(value(&after, "cutover_handovers_total", &[]), 1.0);
    assert!(value(&after, "process_start_time_seconds", &[]) > started);
    assert!(
        supervisor.log().contains(&format!(
            "admin socket {admin} from the previous supervisor"
        )),
        "the successor serves the socket it was handed"
    );
    assert_eq!(
        requests(&after, "2xx"),
        0.0,
        "a new process counts from zero"
    );
    for _ in 0..3 {
        app.get().expect("a 200");
    }
    assert_eq!(requests(&scrape(admin), "2xx"), 3.0);
}

#[test]
fn the_agents_textfile_has_its_last_deploy_of_each_app() {
    let app = App::new("shop");
    let supervisor = Supervisor::start_in(app.home());
    let v1 = app.write_manifest("v1", &[]);
    let output = supervisor.apply(&v1);
    assert!(output.status.success(), "{output:?}");
    let textfile = supervisor.state_dir.join("metrics").join("agent.prom");
    let text = std::fs::read_to_string(&textfile).expect("the default textfile");
    promtool_check(&text).unwrap_or_else(|lint| panic!("promtool: {lint}\n{text}"));
    let dest = app.dest.display().to_string();
    let labels = [("app", "shop"), ("dest", dest.as_str())];
    let first = parse(&text);
    assert_eq!(
        value(&first, "cutover_agent_last_deploy_success", &labels),
        1.0
    );
    let duration = value(
        &first,
        "cutover_agent_last_deploy_duration_seconds",
        &labels,
    );
    assert!(duration > 0.0 && duration < 120.0, "{duration}");
    let at = value(
        &first,
        "cutover_agent_last_deploy_timestamp_seconds",
        &labels,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(at <= now && at > now - 600.0, "{at} against {now}");

    // A deploy whose archive is gone fails: the same file, and one named by the flag, say so.
    let v2 = app.write_manifest("v2", &[]);
    std::fs::remove_file(app.home().join("shop-v2.tar.gz")).expect("remove the archive");
    let custom = app.home().join("textfiles").join("cutover.prom");
    let output = supervisor
        .cli()
        .arg("apply")
        .arg(&v2)
        .arg("--metrics-textfile")
        .arg(&custom)
        .output()
        .expect("run cutover apply");
    assert!(!output.status.success(), "{output:?}");
    let text = std::fs::read_to_string(&custom).expect("the textfile named by the flag");
    let second = parse(&text);
    assert_eq!(
        value(&second, "cutover_agent_last_deploy_success", &labels),
        0.0
    );
    assert!(
        value(
            &second,
            "cutover_agent_last_deploy_timestamp_seconds",
            &labels
        ) >= at
    );
}

#[test]
fn a_canarys_traffic_is_counted_on_its_own_slot_and_its_step_by_verdict() {
    let mut app = App::new("shop");
    // One step at 50 % that never passes on its own: it ends when it is aborted.
    app.tweak = |spec| {
        crate::support::app::canary(spec, &["50%"], Duration::from_secs(600), 1_000_000);
        spec.canary.progress_deadline = Duration::from_secs(600);
    };
    let admin = admin_address();
    let supervisor = serving_with_metrics(&app, admin);
    app.place("v2");
    let v2_canary = [("app", "shop"), ("release", "v2"), ("slot", "canary")];
    let (before, during, answered) = std::thread::scope(|s| {
        let (supervisor, app) = (&supervisor, &app);
        let deploy = s.spawn(move || supervisor.deploy(app, "v2"));
        wait_until("the canary's step", ROLLOUT, || {
            supervisor.status(app).phase.contains("canary step 1/1")
        });
        let before = scrape(admin);
        let mut answered: BTreeMap<String, f64> = BTreeMap::new();
        for _ in 0..20 {
            let answer = app.get().expect("a 200");
            let version = answer.version().expect("a demo-app answer").to_owned();
            *answered.entry(version).or_default() += 1.0;
        }
        for _ in 0..2 {
            let pinned = Request::get("/")
                .header("x-cutover-canary", "1")
                .send(app.listen)
                .expect("a pinned answer");
            assert_eq!(pinned.version(), Some("v2"));
        }
        let during = scrape(admin);
        let abort = supervisor.request(ControlRequest::Abort(CanaryRequest {
            app: app.name.clone(),
        }));
        assert!(matches!(abort, Response::Decided(_)), "{abort:?}");
        let (_, message) = error_of(deploy.join().expect("the deploy thread"));
        assert!(message.contains("aborted by the operator"), "{message}");
        (before, during, answered)
    });
    assert!(answered.len() == 2, "both sides answered: {answered:?}");
    let counted = |labels: [(&str, &str); 3], scrape| {
        let [a, r, s] = labels;
        value(
            scrape,
            "cutover_requests_total",
            &[a, r, s, ("class", "2xx")],
        )
    };
    assert_eq!(
        counted(v2_canary, &during) - counted(v2_canary, &before),
        answered["v2"],
        "the canary's answers, on its slot"
    );
    assert_eq!(
        counted(V1_STABLE, &during) - counted(V1_STABLE, &before),
        answered["v1"],
        "the stable side's answers"
    );
    let pinned = |scrape| value(scrape, "cutover_pinned_requests_total", &v2_canary);
    assert_eq!(
        pinned(&during) - pinned(&before),
        2.0,
        "pinned requests apart"
    );
    let after = scrape(admin);
    let verdicts = [("app", "shop"), ("verdict", "aborted")];
    assert_eq!(value(&after, "cutover_canary_steps_total", &verdicts), 1.0);
    let failed = [("app", "shop"), ("outcome", "failed")];
    assert_eq!(value(&after, "cutover_deploys_total", &failed), 1.0);
}
