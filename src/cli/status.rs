//! `cutover status [APP] [--json]`: apps, live versions, instances, traffic and health.

use std::process::ExitCode;

use clap::Args;

use super::remote::{self, or_dash};
use super::GlobalArgs;
use crate::protocol::{AppStatus, Request, Response, StatusReport, StatusRequest};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show only this app
    pub app: Option<String>,
    /// Print the supervisor's report as JSON (stable field names, for scripts)
    #[arg(long)]
    pub json: bool,
    /// Every Serf member's app versions and health, from their tags and a status query
    #[arg(long)]
    pub fleet: bool,
    #[command(flatten)]
    pub fleet_args: super::fleet::FleetStatusArgs,
}

pub fn run(args: StatusArgs, global: &GlobalArgs) -> ExitCode {
    if args.fleet {
        return super::fleet::fleet_status(args.fleet_args, args.json, global);
    }
    let show_watches = args.app.is_none() && !args.json;
    let request = Request::Status(StatusRequest { app: args.app });
    let report = match remote::call(global, request, |_| {}) {
        Ok(Response::Status(report)) => report,
        Ok(other) => return remote::unexpected("status", &other),
        Err(code) => return code,
    };
    if args.json {
        return remote::print_json(&report);
    }
    print!("{}", render(&report));
    if show_watches {
        // Watches run in `cutover watch`, beside the supervisor; their state is on disk.
        let watches = crate::watch::status::load(&global.state_dir());
        if !watches.is_empty() {
            println!();
            print!("{}", crate::watch::status::render(&watches));
        }
    }
    ExitCode::SUCCESS
}

/// One table of apps, each followed by the table of its instances.
fn render(report: &StatusReport) -> String {
    if report.apps.is_empty() {
        return "no apps: deploy one with a manifest that has an `app:` section\n".to_owned();
    }
    let mut out = String::new();
    for (i, app) in report.apps.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&render_app(app));
    }
    out
}

fn render_app(app: &AppStatus) -> String {
    let mut out = remote::table(
        "",
        &["APP", "LISTEN", "ROUTES", "LIVE", "PHASE"],
        &[vec![
            app.name.clone(),
            app.listen.clone(),
            app.routes.clone(),
            or_dash(app.live_version.as_ref()),
            app.phase.clone(),
        ]],
    );
    if !app.shares_address_with.is_empty() {
        out.push_str(&format!(
            "  {} shared with {}\n",
            app.listen,
            app.shares_address_with.join(", ")
        ));
    }
    if app.instances.is_empty() {
        out.push_str("  no instances\n");
        return out;
    }
    let rows: Vec<Vec<String>> = app
        .instances
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.version.clone(),
                or_dash(i.pid),
                i.addr.clone(),
                i.state.clone(),
                if i.routed { "yes" } else { "no" }.to_owned(),
                i.restarts.to_string(),
                i.requests.to_string(),
                i.errors_5xx.to_string(),
                i.pinned_requests.to_string(),
                i.client_aborts.to_string(),
                format!("{:.1}", i.p99_us as f64 / 1000.0),
                or_dash(i.last_failure.as_ref()),
            ]
        })
        .collect();
    out.push_str(&remote::table(
        "  ",
        &[
            "INSTANCE",
            "VERSION",
            "PID",
            "ADDR",
            "STATE",
            "ROUTED",
            "RESTARTS",
            "REQ",
            "5XX",
            "PINNED",
            "CLIENT ABORTS",
            "P99 MS",
            "LAST FAILURE",
        ],
        &rows,
    ));
    if let Some(certificate) = &app.certificate {
        out.push_str(&format!("  certificate: {certificate}\n"));
    }
    if let Some(log) = &app.access_log {
        out.push_str(&format!(
            "  access log {}: {} line(s) dropped (its writer fell behind), {} lost (failed writes)\n",
            log.path, log.dropped_lines, log.lost_lines
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AccessLogStatus, InstanceStatus};

    #[test]
    fn an_app_reads_as_a_line_then_its_instances() {
        let report = StatusReport {
            apps: vec![AppStatus {
                name: "shop".into(),
                listen: "127.0.0.1:8080".into(),
                routes: "shop.example.com/api".into(),
                shares_address_with: vec!["blog".into()],
                live_version: Some("1.4.2".into()),
                phase: "idle".into(),
                instances: vec![InstanceStatus {
                    id: "shop-1".into(),
                    version: "1.4.2".into(),
                    pid: Some(4242),
                    addr: "127.0.0.1:40001".into(),
                    state: "healthy".into(),
                    routed: true,
                    restarts: 0,
                    last_failure: None,
                    requests: 120,
                    errors_5xx: 1,
                    pinned_requests: 7,
                    client_aborts: 3,
                    in_flight: 0,
                    p99_us: 1250,
                }],
                certificate: None,
                access_log: Some(AccessLogStatus {
                    path: "/var/lib/cutover/logs/shop/access.log".into(),
                    dropped_lines: 12,
                    lost_lines: 0,
                }),
                canary: None,
                recent_rollouts: Vec::new(),
            }],
        };
        let text = render(&report);
        assert!(
            text.starts_with(
                "APP   LISTEN          ROUTES                LIVE   PHASE\n\
                 shop  127.0.0.1:8080  shop.example.com/api  1.4.2  idle\n\
                 \x20 127.0.0.1:8080 shared with blog\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  shop-1    1.4.2    4242  127.0.0.1:40001  healthy  yes"),
            "{text}"
        );
        assert!(
            text.contains("  120  1    7       3              1.2"),
            "{text}"
        );
        assert!(
            text.contains("  access log /var/lib/cutover/logs/shop/access.log: 12 line(s) dropped"),
            "{text}"
        );
    }
}
