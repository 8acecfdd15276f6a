//! `/metrics`: the supervisor in the Prometheus text format, read when scraped from what it keeps
//! anyway (no sampling loop): the proxies' per-instance counters added up by app, release and
//! slot; each instance's health and restarts as its app task reports them; when each served
//! certificate expires; the event counters (rollouts, canary steps, hand-overs); the process's
//! start time and memory.
//!
//! Label values are app, release, slot and instance names and fixed words, never a path.
//! Counters start from zero in each supervisor process: after a hand-over, `rate()` sees the
//! reset (`process_start_time_seconds` moves, `cutover_handovers_total` goes up by one).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};

use super::exposition::{Exposition, Kind};
use super::site::{full, Body, Site};
use crate::protocol::{self, AppStatus, StatusRequest};
use crate::supervisor::events::Counted;
use crate::supervisor::proxy::{recut, Slot, SlotStats};

/// Prometheus' default histogram buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The status classes, as `class` labels, in the order of `SlotStats::classes`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The content type of the text format this page is in.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The route's handler.
pub fn handle(site: Arc<Site>, _request: Request<()>) -> BoxFuture<'static, Response<Body>> {
    Box::pin(async move { full(StatusCode::OK, CONTENT_TYPE, render(&site).await) })
}

/// One app's traffic to one release in one slot, added up over its instances (routed, draining
/// and forgotten ones).
#[derive(Debug, Default)]
struct Traffic {
    counts: SlotStats,
    in_flight: u64,
}

/// The whole page.
pub async fn render(site: &Site) -> String {
    let mut page = Exposition::default();
    let mut traffic: BTreeMap<(String, String, Slot), Traffic> = BTreeMap::new();
    let mut connections = Vec::new();
    let mut certificates = Vec::new();
    for app in site.apps.contexts().await {
        for backend in app.proxy.stats() {
            for slot in Slot::ALL {
                let counts = &backend.slots[slot as usize];
                let routed_here = backend.routed_as == Some(slot);
                if !routed_here && counts.requests() + counts.pinned_requests == 0 {
                    continue;
                }
                let key = (app.name.clone(), backend.version.clone(), slot);
                traffic.entry(key).or_default().counts.add(counts);
            }
            let slot = backend.routed_as.unwrap_or(Slot::Stable);
            let key = (app.name.clone(), backend.version.clone(), slot);
            traffic.entry(key).or_default().in_flight += backend.in_flight;
        }
        for (version, slots) in app.proxy.retired() {
            for slot in Slot::ALL {
                if let Some(series) = traffic.get_mut(&(app.name.clone(), version.clone(), slot)) {
                    series.counts.add(&slots[slot as usize]);
                }
            }
        }
        connections.push((app.name.clone(), app.proxy.client_connections()));
        certificates.push((app.name.clone(), app.proxy.certificate_expiry()));
    }
    write_traffic(&mut page, &traffic);
    page.family(
        "cutover_client_connections",
        Kind::Gauge,
        "Client connections open on the app's public address.",
    );
    for (app, open) in &connections {
        page.sample("cutover_client_connections", &[("app", app)], *open as f64);
    }
    page.family(
        "cutover_certificate_expiry_timestamp_seconds",
        Kind::Gauge,
        "When the certificate served for the host stops being valid (its notAfter), in seconds since the epoch; host * is an app without hosts.",
    );
    for (app, served) in &certificates {
        for (host, not_after) in served {
            let at = not_after.duration_since(UNIX_EPOCH).unwrap_or_default();
            page.sample(
                "cutover_certificate_expiry_timestamp_seconds",
                &[("app", app), ("host", host)],
                at.as_secs() as f64,
            );
        }
    }
    write_instances(&mut page, &status(site).await);
    write_events(&mut page, site);
    write_process(&mut page, site);
    page.finish()
}

/// Every app's status as `cutover status` shows it (instances, health, restarts).
async fn status(site: &Site) -> Vec<AppStatus> {
    // A status answers at once; nothing reads progress lines of it.
    let (progress, _) = tokio::sync::mpsc::channel(1);
    let request = protocol::Request::Status(StatusRequest { app: None });
    match site.apps.handle(request, progress).await {
        protocol::Response::Status(report) => report.apps,
        _ => Vec::new(),
    }
}

/// A family's name and help, and how to read its value from a series' traffic.
type Family = (&'static str, &'static str, fn(&Traffic) -> u64);

fn write_traffic(page: &mut Exposition, traffic: &BTreeMap<(String, String, Slot), Traffic>) {
    let series = || {
        traffic.iter().map(|((app, release, slot), t)| {
            (
                [
                    ("app", app.as_str()),
                    ("release", release.as_str()),
                    ("slot", slot.name()),
                ],
                t,
            )
        })
    };
    page.family(
        "cutover_requests_total",
        Kind::Counter,
        "Requests the proxy sent to the release's instances, by the class of the answer (an exchange that broke counts as 5xx); pinned requests apart.",
    );
    for (labels, t) in series() {
        for (class, n) in CLASSES.iter().zip(t.counts.classes) {
            let [app, release, slot] = labels;
            page.sample(
                "cutover_requests_total",
                &[app, release, slot, ("class", class)],
                n as f64,
            );
        }
    }
    page.family(
        "cutover_request_duration_seconds",
        Kind::Histogram,
        "Time from a request's arrival at the proxy to the instance's response head, for answered requests (buckets within 1/8 of their bound, see README).",
    );
    let bounds_us = BUCKETS.map(|s| (s * 1e6) as u64);
    for (labels, t) in series() {
        let (cumulative, sum) = recut(&t.counts.latency, &bounds_us);
        let count = t.counts.latency.iter().sum();
        let buckets: Vec<(f64, u64)> = BUCKETS.iter().copied().zip(cumulative).collect();
        page.histogram(
            "cutover_request_duration_seconds",
            &labels,
            &buckets,
            sum,
            count,
        );
    }
    let counters: [Family; 6] = [
        (
            "cutover_requests_in_flight",
            "Requests (and TCP-mode connections) in progress at the release's instances.",
            |t| t.in_flight,
        ),
        (
            "cutover_upstream_connect_failures_total",
            "Connections to the release's instances that could not be made (the request went to another instance).",
            |t| t.counts.failed_connects,
        ),
        (
            "cutover_response_bytes_total",
            "Body bytes of the release's answers sent on to clients (HTTP mode; heads not counted).",
            |t| t.counts.response_bytes,
        ),
        (
            "cutover_client_aborts_total",
            "Requests their client broke off (an upload aborted or malformed, a client too slow): never held against the release.",
            |t| t.counts.client_aborts,
        ),
        (
            "cutover_pinned_requests_total",
            "Requests the canary header pinned to this side (testers): counted apart, never judged.",
            |t| t.counts.pinned_requests,
        ),
        (
            "cutover_pinned_server_errors_total",
            "Pinned requests answered with a 5xx or broken.",
            |t| t.counts.pinned_errors_5xx,
        ),
    ];
    for (name, help, value) in counters {
        let kind = if name.ends_with("_total") {
            Kind::Counter
        } else {
            Kind::Gauge
        };
        page.family(name, kind, help);
        for (labels, t) in series() {
            page.sample(name, &labels, value(t) as f64);
        }
    }
}

fn write_instances(page: &mut Exposition, apps: &[AppStatus]) {
    let instances = || {
        apps.iter().flat_map(|app| {
            app.instances.iter().map(move |i| {
                let labels = [
                    ("app", app.name.as_str()),
                    ("release", i.version.as_str()),
                    ("instance", i.id.as_str()),
                ];
                (labels, i)
            })
        })
    };
    page.family(
        "cutover_app_live_release",
        Kind::Gauge,
        "1 for the release serving the app's traffic.",
    );
    for app in apps {
        if let Some(live) = &app.live_version {
            page.sample(
                "cutover_app_live_release",
                &[("app", &app.name), ("release", live)],
                1.0,
            );
        }
    }
    page.family(
        "cutover_instance_healthy",
        Kind::Gauge,
        "1 while the instance passes its health checks, else 0.",
    );
    for (labels, i) in instances() {
        let healthy = f64::from(u8::from(i.state == "healthy"));
        page.sample("cutover_instance_healthy", &labels, healthy);
    }
    page.family(
        "cutover_instance_restarts_total",
        Kind::Counter,
        "Times the instance's process was started again after it ended.",
    );
    for (labels, i) in instances() {
        page.sample(
            "cutover_instance_restarts_total",
            &labels,
            f64::from(i.restarts),
        );
    }
    page.family(
        "cutover_instance_crash_looping",
        Kind::Gauge,
        "1 while the instance is held back as crash-looping, else 0.",
    );
    for (labels, i) in instances() {
        let looping = f64::from(u8::from(i.state == "crash-looping"));
        page.sample("cutover_instance_crash_looping", &labels, looping);
    }
}

fn write_events(page: &mut Exposition, site: &Site) {
    let counts = site.events.counts();
    let of = |what: Counted| counts.iter().filter(move |(w, ..)| *w == what);
    page.family(
        "cutover_deploys_total",
        Kind::Counter,
        "Deploys that ended, by outcome (succeeded, failed).",
    );
    for (_, app, outcome, n) in of(Counted::Deploy) {
        page.sample(
            "cutover_deploys_total",
            &[("app", app), ("outcome", outcome)],
            *n as f64,
        );
    }
    page.family(
        "cutover_rollbacks_total",
        Kind::Counter,
        "Rollbacks that ended, by trigger (operator, automatic: the live release crash-looped) and outcome.",
    );
    for (trigger, what) in [
        ("operator", Counted::OperatorRollback),
        ("automatic", Counted::AutomaticRollback),
    ] {
        for (_, app, outcome, n) in of(what) {
            page.sample(
                "cutover_rollbacks_total",
                &[("app", app), ("trigger", trigger), ("outcome", outcome)],
                *n as f64,
            );
        }
    }
    page.family(
        "cutover_canary_steps_total",
        Kind::Counter,
        "Canary steps that ended, by verdict (pass, fail, promoted or aborted by the operator).",
    );
    for (_, app, verdict, n) in of(Counted::CanaryStep) {
        page.sample(
            "cutover_canary_steps_total",
            &[("app", app), ("verdict", verdict)],
            *n as f64,
        );
    }
    page.family(
        "cutover_handovers_total",
        Kind::Counter,
        "Hand-overs (supervise --take-over) behind this supervisor, its predecessors' included.",
    );
    page.sample(
        "cutover_handovers_total",
        &[],
        site.events.handovers() as f64,
    );
}

fn write_process(page: &mut Exposition, site: &Site) {
    page.family(
        "process_start_time_seconds",
        Kind::Gauge,
        "Start time of the supervisor process since the Unix epoch, in seconds: its counters start from zero then.",
    );
    let started = site
        .started
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    page.sample("process_start_time_seconds", &[], started);
    if let Some(rss) = resident_bytes() {
        page.family(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size of the supervisor process, in bytes.",
        );
        page.sample("process_resident_memory_bytes", &[], rss as f64);
    }
}

/// The process's resident set, from `/proc/self/statm` (in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()?;
    Some(pages * u64::try_from(page).ok()?)
}
