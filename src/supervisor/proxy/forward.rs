//! One request through the proxy: pick an instance from the route of the moment, prepare the
//! request (`request`), send it, retry on another instance when that is safe, and hand back the
//! response or the WebSocket tunnel — never an answer that belongs to another request.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::access_entry::{Begin, Entry};
use super::body::ResponseBody;
use super::challenges::challenges;
use super::downstream::{self, Accepted, OpenGuard};
use super::forward_h2::{self, client_failed};
use super::framing::Framing;
use super::head::{Forwarding, Head, X_REQUEST_ID};
use super::request::{self, request_id, strip_hop_by_hop, RequestId};
use super::route::{
    next_backend, sides, BackendState, Choice, Hold, InFlight, Routed, SendError, Side, Slot,
};
use super::site::SiteState;
use super::state::ProxyState;
use super::upstream::{self, Outgoing};

pub(super) async fn handle(
    proxy: Arc<ProxyState>,
    accepted: Accepted,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    // An ACME HTTP-01 challenge is the supervisor's own, whatever app the host is routed to.
    if let Some(answer) = challenges().http_answer(req.uri().path()) {
        return Ok(challenge_answer(answer));
    }
    let id = request_id(req.headers());
    let mut entry = None;
    // The worker's own copy of the sites table, kept while the request runs.
    let sites = proxy.sites(accepted.worker).table.load_full();
    let site = sites.pick(req.uri(), req.headers());
    let hsts = site.filter(|_| accepted.tls).and_then(|site| site.hsts());
    let mut response = match site {
        Some(site) => match site.redirect_port() {
            Some(port) => to_https(&req, port),
            None => pick_and_send(site, accepted, req, &id, &mut entry).await,
        },
        None => no_site(&req),
    };
    if let Some(hsts) = hsts {
        response
            .headers_mut()
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert(hsts);
    }
    if let Some(mut entry) = entry {
        entry.answered(response.status().as_u16());
        response.body_mut().log_to(entry);
    }
    // The client sees the id the instance logged (or the proxy's own answer carries it).
    response
        .headers_mut()
        .entry(&X_REQUEST_ID)
        .or_insert(id.value);
    Ok(response)
}

/// `308 Permanent Redirect` to the request's URL over HTTPS on `port` (`tls.redirect_from`): the
/// same host (without the port it came with) and path with its query; a request naming no host
/// cannot be sent anywhere and gets a 400.
fn to_https(req: &Request<Incoming>, port: u16) -> Response<ResponseBody> {
    let Some(host) = crate::protocol::routes::request_host(req.uri(), req.headers()) else {
        let mut response = Response::new(ResponseBody::text(
            "400 bad request: a redirect to HTTPS needs the Host it is for\n",
        ));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = match port {
        443 => format!("https://{host}{target}"),
        port => format!("https://{host}:{port}{target}"),
    };
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// The answer to a request no app on the address takes: what is wrong with it, if anything, else
/// a 404 naming its host.
fn no_site(req: &Request<Incoming>) -> Response<ResponseBody> {
    if let Some((code, why)) = request::refused(req) {
        let mut response = status(code, why);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let host = crate::protocol::routes::request_host(req.uri(), req.headers()).unwrap_or("");
    tracing::debug!(host, path = req.uri().path(), "no app takes the request");
    status(
        StatusCode::NOT_FOUND,
        "404 not found: no app on this address takes this host and path\n",
    )
}

/// Picks the instance and sends the request; every failure is an answer of the proxy's own.
/// With the app's access log on, `entry` gets the request's line, told where the request went.
async fn pick_and_send(
    proxy: &SiteState,
    accepted: Accepted,
    mut req: Request<Incoming>,
    id: &RequestId,
    entry: &mut Option<Box<Entry>>,
) -> Response<ResponseBody> {
    let lane = proxy.lane(accepted.worker);
    let mut table = lane.table.load_full();
    // With the log off, this test is all a request pays for it.
    if table.access_log.is_some() {
        *entry = Some(Entry::begin(
            &table,
            Begin {
                worker: accepted.worker,
                method: req.method(),
                uri: req.uri(),
                request_id: &id.value,
                client: &accepted.client_ip,
            },
        ));
    }
    if let Some((code, why)) = request::refused(&req) {
        // What follows a refused request on its connection (a CONNECT's tunnel bytes) is no
        // request either: the connection ends with the answer.
        let mut response = status(code, why);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    // The request's wait for an instance, if none can take it (`hold_requests`).
    let mut hold = Hold::default();
    if table.backends.is_empty() {
        match proxy.rerouted(accepted.worker, &table, &mut hold).await {
            Some(routed) => table = routed,
            None => {
                return status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "503 service unavailable: no healthy instance of this app is routed yet\n",
                )
            }
        }
    }
    // During a canary the request's side is tried first, the other side if none of it answers.
    let Choice {
        side,
        cookie,
        routed,
    } = match &table.split {
        Some(split) if table.stable_count < table.backends.len() => split.side(req.headers()),
        _ => Choice {
            side: Side::Stable,
            cookie: None,
            routed: Routed::ByRoute,
        },
    };
    if proxy.upstream_h2.load(std::sync::atomic::Ordering::Relaxed) {
        let choice = forward_h2::Choice {
            side,
            routed,
            cookie,
        };
        let route = (table, hold);
        return forward_h2::send(proxy, &accepted, req, id, entry, route, choice).await;
    }
    let upgrade = request::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    request::prepare(&mut req, upgrade);
    // Only safe methods without a body may be sent twice (what nginx's proxy_next_upstream does
    // by default); anything else is retried only when it provably never left the proxy.
    let replayable = !upgrade && request::is_replayable(&req);
    let mut req = Outgoing::new(
        req,
        &Forwarding {
            client_ip: &accepted.client_ip,
            request_id: &id.value,
            id_from_client: id.from_client,
            https: accepted.tls,
        },
    );
    req.pace_body(accepted.conn.limits.body());
    // A replayable request is sent once more if the first exchange breaks.
    let mut replays = u8::from(replayable);
    // Only a new connection is sure to carry no bytes of an earlier exchange.
    let mut fresh = false;
    loop {
        let [first, second] = sides(&table, side);
        let mut tried = 0u64;
        while let Some(index) = next_backend(&table, lane, [&first, &second], &mut tried) {
            let state = &table.backends[index];
            let slot = table.slot_of(index);
            if let Some(entry) = entry {
                entry.picked(&table, index);
            }
            let in_flight = InFlight::new(table.clone(), index, accepted.worker);
            let started = Instant::now();
            match state.send(accepted.worker, slot, &mut req, fresh).await {
                Ok((head, conn)) if answers_another(state, &head, &id.value) => {
                    // The instance wrote past the end of an earlier answer, and those bytes
                    // came back for this request: they are nobody's, and the connection goes.
                    drop(conn);
                    state.record_broken(accepted.worker, routed, slot);
                    tracing::warn!(
                        backend = %state.backend.id,
                        "the answer to request {:?} named request {:?}: the instance wrote more than its answers; connection closed",
                        id.value,
                        head.request_id.as_ref().unwrap_or(&id.value)
                    );
                    if replays == 0 {
                        return status(
                            StatusCode::BAD_GATEWAY,
                            "502 bad gateway: the instance's answer belonged to another request\n",
                        );
                    }
                    replays -= 1;
                    // The same instance may be asked again, on a new connection.
                    tried &= !(1u64 << (index % 64));
                    fresh = true;
                }
                Ok((head, conn)) => {
                    state.record(
                        accepted.worker,
                        routed,
                        slot,
                        head.status.as_u16(),
                        started.elapsed(),
                    );
                    let mut response =
                        respond(head, conn, &accepted, (in_flight, slot), client_upgrade);
                    if let Some(cookie) = cookie {
                        response.headers_mut().append(header::SET_COOKIE, cookie);
                    }
                    return response;
                }
                Err(SendError::Connect(err)) => {
                    tracing::debug!(backend = %state.backend.id, "connect failed, trying another: {err}");
                }
                // Not recorded against the instance: a client that stalls its body, or sends a
                // broken one, is no sign of a bad release.
                Err(SendError::Cut) => {
                    return status(
                        StatusCode::BAD_GATEWAY,
                        "502 bad gateway: instance drained\n",
                    );
                }
                Err(SendError::Client(err)) => {
                    state.record_client_abort(accepted.worker, slot);
                    tracing::debug!(backend = %state.backend.id, "the client's request body failed: {err}");
                    return client_failed(err.kind());
                }
                Err(SendError::Exchange(err)) => {
                    state.record_broken(accepted.worker, routed, slot);
                    tracing::debug!(backend = %state.backend.id, "exchange failed: {err}");
                    if replays == 0 {
                        return status(
                            StatusCode::BAD_GATEWAY,
                            "502 bad gateway: the instance closed the connection before answering\n",
                        );
                    }
                    replays -= 1;
                }
            }
        }
        // No instance accepted the connection, so nothing of the request was sent: within its
        // hold it may wait for the next route (an instance restarted, a deploy's first healthy).
        match proxy.rerouted(accepted.worker, &table, &mut hold).await {
            Some(routed) => table = routed,
            None => {
                return status(
                    StatusCode::BAD_GATEWAY,
                    "502 bad gateway: no instance of this app accepted the connection\n",
                )
            }
        }
    }
}

/// Whether an answer names another request than the one it came for. Only instances that have
/// echoed the proxy's `X-Request-Id` before are held to it: an app that sets ids of its own is
/// not mistaken for one that answers the wrong request. Ids are compared as Rails and others
/// clean them (letters, digits, `-`, `_`, `@` kept).
fn answers_another(state: &BackendState, head: &Head, sent: &HeaderValue) -> bool {
    let Some(answered) = &head.request_id else {
        return false;
    };
    let clean = |id: &HeaderValue| {
        id.as_bytes()
            .iter()
            .copied()
            .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'@'))
            .collect::<Vec<u8>>()
    };
    if answered == sent || clean(answered) == clean(sent) {
        state.saw_id_echoed();
        return false;
    }
    state.echoes_ids()
}

/// The instance's response for the client; a 101 to an upgrade becomes a tunnel.
fn respond(
    head: Head,
    conn: upstream::Conn,
    accepted: &Accepted,
    (in_flight, slot): (InFlight, Slot),
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return status(
                StatusCode::BAD_GATEWAY,
                "502 bad gateway: the instance switched protocols unasked\n",
            );
        };
        // The tunnel outlives its connection's task: it keeps the worker open by itself.
        let open = OpenGuard::new(accepted.open_count.clone());
        let downstream_conn = accepted.conn.clone();
        tokio::spawn(tunnel(
            client_upgrade,
            conn,
            in_flight,
            open,
            downstream_conn,
        ));
        return response;
    }
    strip_hop_by_hop(response.headers_mut());
    if matches!(head.framing, Framing::Chunked | Framing::Close) {
        // A length beside a Transfer-Encoding is not the body's (RFC 9112 section 6.3).
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    let mut conn = conn;
    conn.idle_hint = head.idle_hint;
    *response.body_mut() = ResponseBody::proxied(
        conn,
        head.framing,
        head.keep_alive,
        accepted.worker,
        (in_flight, slot),
    );
    response
}

/// Copies bytes both ways between an upgraded client and instance until either side closes,
/// `drain` cuts the instance or the proxy's close cuts its clients; the tunnel counts as in
/// flight all along.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    mut backend: upstream::Conn,
    in_flight: InFlight,
    _open: OpenGuard,
    downstream_conn: Arc<downstream::Conn>,
) {
    let state: &BackendState = in_flight.state();
    let client = match client.await {
        Ok(client) => client,
        Err(err) => {
            tracing::debug!(backend = %state.backend.id, "upgrade failed: {err}");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let copy = async {
        // What the instance sent right after its 101 goes first.
        if !backend.buf.is_empty() {
            client.write_all(&backend.buf).await?;
        }
        tokio::io::copy_bidirectional(&mut client, &mut backend.io).await
    };
    tokio::select! {
        result = copy => {
            if let Err(err) = result {
                tracing::debug!(backend = %state.backend.id, "tunnel ended: {err}");
            }
        }
        _ = state.cut.cancelled() => {
            tracing::debug!(backend = %state.backend.id, "tunnel cut by drain");
        }
        () = downstream_conn.cut() => {
            tracing::debug!(backend = %state.backend.id, "tunnel cut at the proxy's close deadline");
        }
    }
}

/// The key authorization a waiting HTTP-01 challenge asks for (RFC 8555 section 8.3).
pub(super) fn challenge_answer(answer: String) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Static(Some(answer.into())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

fn status(code: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::text(text));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
