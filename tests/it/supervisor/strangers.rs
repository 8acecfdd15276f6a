//! What a stranger can do to a release through the app's public address: nothing that ends it.
//! Uploads it aborts and chunked bodies it malforms are its own faults, counted apart from the
//! instances' errors, and requests it pins to the canary with the tester header are never
//! judged; a good canary still promotes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cutover::protocol::{AppSpec, Response};

use crate::support::app::{self, App};
use crate::support::load::Load;
use crate::support::supervisor::ROLLOUT;
use crate::support::wait_until;

/// One step at 50 % for 3 s: long enough for the stranger's requests to land in it.
fn canary(spec: &mut AppSpec) {
    app::canary(spec, &["50%"], Duration::from_secs(3), 50);
    // The latency judgement has tests of its own; this one is about errors.
    spec.canary.max_p99_ratio = 10.0;
}

/// Sends a request head and part of its body, then goes away: an aborted upload.
fn abort_upload(addr: SocketAddr, pinned: bool) {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return;
    };
    let pin = if pinned {
        "x-cutover-canary: 1\r\n"
    } else {
        ""
    };
    let _ = write!(
        stream,
        "POST /upload HTTP/1.1\r\nhost: shop\r\n{pin}content-length: 100000\r\n\r\n{}",
        "x".repeat(1000)
    );
    // Gone before the rest: the proxy sees the body end early.
}

/// Sends a chunked body with a chunk size that is not hex, and reads the answer.
fn malformed_chunks(addr: SocketAddr, pinned: bool) {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let pin = if pinned {
        "x-cutover-canary: 1\r\n"
    } else {
        ""
    };
    let _ = write!(
        stream,
        "POST /upload HTTP/1.1\r\nhost: shop\r\n{pin}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n"
    );
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
}

#[test]
fn a_stranger_s_broken_uploads_and_the_canary_header_cannot_end_a_good_canary() {
    let mut app = App::new("shop");
    app.tweak = canary;
    let supervisor = app.serving(&["v1", "v2"]);
    let load = Load::start(app.listen, 4, "/");
    load.wait_for_more_ok(200, ROLLOUT);

    let stop = Arc::new(AtomicBool::new(false));
    let addr = app.listen;
    let stranger = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                let pinned = sent % 2 == 0;
                abort_upload(addr, pinned);
                malformed_chunks(addr, pinned);
                sent += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            sent
        })
    };
    // The stranger is at it before the canary starts and all through its step.
    let outcome = supervisor.deploy(&app, "v2");
    stop.store(true, Ordering::Relaxed);
    let sent = stranger.join().unwrap();
    assert!(
        matches!(outcome, Response::Deployed(ref d) if d.version == "v2"),
        "a good canary was ended by a stranger ({sent} rounds of broken uploads): {outcome:?}"
    );
    let report = load.stop();
    assert_eq!(report.failures(), 0, "{report:?}");
    assert_eq!(report.socket_errors, 0, "{report:?}");
    // The stranger's requests are on record, as its own.
    wait_until("the client aborts to show", ROLLOUT, || {
        let status = supervisor.status(&app);
        status.instances.iter().any(|i| i.client_aborts > 0)
    });
}
