//! TCP mode through a real supervisor: every connection is piped whole to one instance, and a
//! blue-green switch under a stream of new connections refuses or breaks none of them.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover::protocol::app::Mode;
use cutover::protocol::AppSpec;

use super::harness::{App, Reaper, Supervisor, ROLLOUT};
use crate::support::wait_until;

fn tcp(spec: &mut AppSpec) {
    spec.mode = Mode::Tcp;
    // A TCP connect is the health check of an app that may not speak HTTP.
    spec.health.path = None;
}

/// One exchange on a new connection: the version that answered, or what went wrong.
fn exchange(app: &App) -> Result<String, String> {
    let mut stream =
        std::net::TcpStream::connect(app.listen).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    // Piped bytes, not proxied HTTP: nothing of the HTTP proxy's own (its request id) is added.
    if answer.to_ascii_lowercase().contains("x-request-id") {
        return Err(format!("answered through the HTTP proxy: {answer:?}"));
    }
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    body.strip_prefix("hello from ")
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| format!("not a demo app answer: {answer:?}"))
}

#[test]
fn a_switch_in_tcp_mode_refuses_no_connection() {
    let home = tempfile::tempdir().expect("temp dir");
    let mut app = App::new(home.path(), "shop");
    app.tweak = tcp;
    let _reaper = Reaper(vec![app.dest.clone()]);
    let supervisor = Supervisor::start(home.path());
    app.place("v1");
    app.place("v2");
    supervisor.deploy_ok(&app, "v1");
    wait_until("v1 to answer through the TCP proxy", ROLLOUT, || {
        exchange(&app).as_deref() == Ok("v1")
    });

    let stop = AtomicBool::new(false);
    let seen: Mutex<Vec<Result<String, String>>> = Mutex::default();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let answer = exchange(&app);
                seen.lock().unwrap().push(answer);
            }
        });
        wait_until("connections flowing", ROLLOUT, || {
            seen.lock().unwrap().len() >= 50
        });
        supervisor.deploy_ok(&app, "v2");
        let switched = seen.lock().unwrap().len();
        wait_until("v2 answering", ROLLOUT, || {
            seen.lock().unwrap()[switched..]
                .iter()
                .filter(|a| a.as_deref() == Ok("v2"))
                .count()
                >= 50
        });
        stop.store(true, Ordering::Relaxed);
    });
    let seen = Arc::new(seen.into_inner().unwrap());
    let failed: Vec<&String> = seen.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    let stats = supervisor.status(&app);
    assert_eq!(stats.live_version.as_deref(), Some("v2"));
}
