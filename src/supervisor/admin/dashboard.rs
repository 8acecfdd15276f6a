//! The live dashboard on the admin address: one read-only page, its script and style embedded in
//! the binary, and the two JSON documents it polls.
//!
//! - `/` (the page), `/dashboard.js`, `/dashboard.css`: the files in `dashboard/`, as built in.
//! - `/api/status`: every app as `cutover status --json` shows it (instances, health, restarts,
//!   a canary's share and readings, the last rollouts), each with its releases.
//! - `/api/fleet`: what `cutover status --fleet` shows, from the Serf agent the supervisor's
//!   environment names (`SERF_RPC_ADDR`, `SERF_RPC_AUTH`, `CUTOVER_SERF_BIN`), or why there is
//!   none. Asked only when the page asks: the supervisor never polls Serf.
//!
//! The page polls rather than listening to server-sent events: an answer is built only when a
//! browser asks, from what the app tasks already hold, so an idle supervisor runs no loop and keeps
//! no connection or subscriber per open tab. The canary's history comes from the readings its
//! judge already takes (`rollout::canary_trace`), so a page opened mid-canary draws it whole.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::fleet::serf::Serf;
use crate::fleet::status;
use crate::protocol::{ReleasesRequest, Request as Ask, Response as Answer, StatusRequest};
use crate::supervisor::apps::Apps;

use super::site::{full, Body, Site};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// The page may load only its own script and style and talk only to this address.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// How long members get to answer the fleet's status query (as `cutover status --fleet`).
const FLEET_QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// `/`: the page.
pub fn page(_: Arc<Site>, _: Request<()>) -> BoxFuture<'static, Response<Body>> {
    Box::pin(async {
        let mut page = asset("text/html; charset=utf-8", PAGE);
        let headers = page.headers_mut();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_POLICY),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        page
    })
}

/// `/dashboard.js`: the script that polls and draws.
pub fn script(_: Arc<Site>, _: Request<()>) -> BoxFuture<'static, Response<Body>> {
    Box::pin(async { asset("text/javascript; charset=utf-8", SCRIPT) })
}

/// `/dashboard.css`.
pub fn style(_: Arc<Site>, _: Request<()>) -> BoxFuture<'static, Response<Body>> {
    Box::pin(async { asset("text/css; charset=utf-8", STYLE) })
}

/// `/api/status`: every app, each with its releases.
pub fn status(site: Arc<Site>, _: Request<()>) -> BoxFuture<'static, Response<Body>> {
    Box::pin(async move { json_answer(&apps_json(&site.apps).await) })
}

/// `/api/fleet`: the fleet's rows, or `"serf": false` and why there is no fleet to show.
pub fn fleet(_: Arc<Site>, _: Request<()>) -> BoxFuture<'static, Response<Body>> {
    Box::pin(async { json_answer(&fleet_json().await) })
}

/// Every app's status, each with its releases, asked of the app tasks as the control socket
/// asks them.
async fn apps_json(apps: &Apps) -> Value {
    let report = match ask(apps, Ask::Status(StatusRequest { app: None })).await {
        Answer::Status(report) => report,
        Answer::Error(e) => return json!({ "error": e.message }),
        other => return json!({ "error": format!("unexpected answer {other:?}") }),
    };
    let mut listed = Vec::new();
    for app in report.apps {
        let releases = ask(
            apps,
            Ask::Releases(ReleasesRequest {
                app: app.name.clone(),
            }),
        )
        .await;
        let mut entry = serde_json::to_value(app).unwrap_or(Value::Null);
        // An app stopped between the two questions shows without its releases.
        if let (Answer::Releases(list), Some(entry)) = (releases, entry.as_object_mut()) {
            let releases = serde_json::to_value(list.releases).unwrap_or(Value::Null);
            entry.insert("releases".to_owned(), releases);
        }
        listed.push(entry);
    }
    json!({
        "supervisor": format!("cutover {}", env!("CARGO_PKG_VERSION")),
        "apps": listed,
    })
}

async fn ask(apps: &Apps, request: Ask) -> Answer {
    // Status and releases send no progress lines.
    let (progress, _) = mpsc::channel(1);
    apps.handle(request, progress).await
}

async fn fleet_json() -> Value {
    match status::collect(&Serf::from_env(), &[], FLEET_QUERY_TIMEOUT).await {
        Ok(rows) => {
            let rows = status::rows_json(&rows);
            json!({ "serf": true, "rows": rows })
        }
        Err(e) => json!({ "serf": false, "error": e.to_string() }),
    }
}

fn asset(content_type: &str, text: &'static str) -> Response<Body> {
    let mut answer = full(StatusCode::OK, content_type, text);
    answer.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    answer
}

fn json_answer(value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut answer = full(StatusCode::OK, "application/json", body);
    answer
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_what_is_built_in() {
        for asset in ["dashboard.js", "dashboard.css"] {
            assert!(
                PAGE.contains(&format!("\"{asset}\"")),
                "the page names {asset}"
            );
        }
        for outside in ["http://", "https://", "//cdn", "@import", "fonts.g"] {
            assert!(
                !PAGE.contains(outside) && !STYLE.contains(outside),
                "the page reaches outside: {outside}"
            );
        }
    }

    #[test]
    fn the_script_never_writes_markup_from_data() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!SCRIPT.contains(sink), "dashboard.js uses {sink}");
        }
    }
}
