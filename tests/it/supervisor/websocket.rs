//! WebSockets through a real supervisor: one opened on the old release keeps echoing across a
//! blue-green switch until the drain deadline, then the proxy cuts it and the deploy says so.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cutover::protocol::Response;

use crate::support::app::App;
use crate::support::supervisor::ROLLOUT;
use crate::support::wait_until;

/// The app's drain timeout: long enough to watch the socket outlive the switch, short for a test.
const DRAIN: Duration = Duration::from_secs(4);
/// How long after the drain deadline the cut may take to reach the client (a loaded CI box).
const CUT_MARGIN: Duration = Duration::from_secs(2);

/// A client WebSocket on a blocking stream, with just enough of RFC 6455 for the demo's echo.
struct WebSocket(TcpStream);

impl WebSocket {
    /// Connects to `addr` and upgrades `/ws`; an error unless the answer is the right 101.
    fn open(addr: SocketAddr) -> Result<WebSocket, String> {
        let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                  Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            )
            .map_err(|e| format!("write the handshake: {e}"))?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                other => {
                    let head = String::from_utf8_lossy(&head);
                    return Err(format!("handshake cut short after {head:?}: {other:?}"));
                }
            }
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        // The accept hash of the RFC's sample key (section 1.3).
        if !head.starts_with("http/1.1 101")
            || !head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=")
        {
            return Err(format!("not a WebSocket upgrade: {head}"));
        }
        Ok(WebSocket(stream))
    }

    /// Sends `text` in a masked text frame and returns the text of the frame echoed back.
    fn echo(&mut self, text: &str) -> Result<String, String> {
        assert!(text.len() < 126, "one-byte payload lengths only");
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        self.0
            .write_all(&frame)
            .map_err(|e| format!("write a frame: {e}"))?;
        let mut head = [0u8; 2];
        self.0
            .read_exact(&mut head)
            .map_err(|e| format!("read the echo: {e}"))?;
        if head[0] != 0x81 || head[1] >= 126 {
            return Err(format!(
                "expected a short unmasked text frame, got {head:02x?}"
            ));
        }
        let mut payload = vec![0u8; usize::from(head[1])];
        self.0
            .read_exact(&mut payload)
            .map_err(|e| format!("read the echo: {e}"))?;
        String::from_utf8(payload).map_err(|e| e.to_string())
    }

    /// Echoes `still open N` every `every` until `until`, each answered in full: the socket
    /// stays open `since` an event (named in the failure) with a drain timeout of `drain`.
    fn keep_echoing(
        &mut self,
        until: Instant,
        every: Duration,
        since: (Instant, &str),
        drain: Duration,
    ) {
        let mut echoes = 0;
        while Instant::now() < until {
            let text = format!("still open {echoes}");
            assert_eq!(
                self.echo(&text).as_deref(),
                Ok(text.as_str()),
                "{:?} after {} (drain timeout {drain:?})",
                since.0.elapsed(),
                since.1
            );
            echoes += 1;
            std::thread::sleep(every);
        }
    }

    /// Waits until `deadline` for the connection to be cut (EOF or a reset) and says how it ended;
    /// an error if it is still open, or if a frame came instead (0x88: the app's own close frame,
    /// which the demo app sends when it is stopped, not a cut by the proxy).
    fn wait_cut(&mut self, deadline: Instant) -> Result<String, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.0
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        match self.0.read(&mut buf) {
            Ok(0) => Ok("EOF".to_owned()),
            Ok(n) => Err(format!("a frame instead of a cut: {:02x?}", &buf[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err("still open".to_owned())
            }
            Err(e) => Ok(e.to_string()),
        }
    }
}

/// The progress lines of a deploy running on another thread, each with when the test got it.
struct Lines {
    rx: mpsc::Receiver<(Instant, String)>,
    seen: Vec<String>,
}

impl Lines {
    /// Waits (up to [`ROLLOUT`]) for a line that starts with `start`; when it came.
    fn wait_for(&mut self, start: &str) -> Instant {
        let deadline = Instant::now() + ROLLOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((at, line)) => {
                    let found = line.starts_with(start);
                    self.seen.push(line);
                    if found {
                        return at;
                    }
                }
                Err(e) => panic!("no progress line {start:?} ({e}); got {:#?}", self.seen),
            }
        }
    }

    /// Every line, once the deploy has ended.
    fn all(mut self) -> Vec<String> {
        self.seen.extend(self.rx.iter().map(|(_, line)| line));
        self.seen
    }
}

#[test]
fn a_websocket_on_the_old_release_stays_open_until_the_drain_deadline() {
    let mut app = App::new("chat");
    app.tweak = |spec| spec.drain_timeout = DRAIN;
    // v2 listens only after 1.5 s: a window in which it is starting and v1 still serves.
    app.faults = vec![("v2".into(), "--boot-delay 1500".into())];
    let supervisor = app.serving(&["v1", "v2"]);
    let mut ws = WebSocket::open(app.listen).expect("a WebSocket to v1");
    assert_eq!(ws.echo("hello v1").as_deref(), Ok("hello v1"));

    let (tx, rx) = mpsc::channel();
    let mut lines = Lines {
        rx,
        seen: Vec::new(),
    };
    let (supervisor, app) = (&supervisor, &app);
    std::thread::scope(|s| {
        let deploy = s.spawn(move || {
            supervisor.deploy_watched(app, "v2", move |progress| {
                let _ = tx.send((Instant::now(), progress.message.clone()));
            })
        });

        lines.wait_for("starting 1 instance(s) of v2");
        assert_eq!(ws.echo("while v2 starts").as_deref(), Ok("while v2 starts"));
        let answer = app.get().expect("a GET while v2 starts");
        assert_eq!(answer.version(), Some("v1"), "{answer:?}");

        let switch = lines.wait_for("switching traffic to v2");
        app.wait_serving("v2");
        assert_eq!(
            ws.echo("after the switch").as_deref(),
            Ok("after the switch")
        );
        let status = supervisor.status(app);
        let v1 = status.instances.iter().find(|i| i.version == "v1");
        assert!(
            v1.is_some_and(|v1| !v1.routed && v1.in_flight == 1),
            "v1 is out of the route, with the socket in flight: {status:?}"
        );
        // The proxy's drain deadline is DRAIN after the drain begins, just after this line.
        let draining = lines.wait_for("draining 1 old instance(s)");

        // Open all along until half-way to the drain deadline...
        let half_way = switch + DRAIN / 2;
        assert!(
            Instant::now() < half_way,
            "the switch took {:?} to show, too long to look before the drain deadline",
            switch.elapsed()
        );
        ws.keep_echoing(
            half_way,
            Duration::from_millis(100),
            (switch, "the switch"),
            DRAIN,
        );
        // ...then cut by the proxy at the deadline: soon after it, and not before it (less a
        // second for how late the test may have read the switch line).
        let cut = ws.wait_cut(draining + DRAIN + CUT_MARGIN);
        let (after_switch, after_drain) = (switch.elapsed(), draining.elapsed());
        assert!(
            cut.is_ok(),
            "not cut by the drain deadline ({after_drain:?} after the drain began, drain \
             timeout {DRAIN:?}): {cut:?}"
        );
        assert!(
            after_switch >= DRAIN - Duration::from_secs(1),
            "cut {after_switch:?} after the switch, before the drain deadline ({DRAIN:?})"
        );
        match deploy.join().expect("the deploy thread") {
            Response::Deployed(outcome) => assert_eq!(outcome.version, "v2"),
            other => panic!("deploy of v2: {other:?}\n{}", supervisor.log()),
        }
    });

    let lines = lines.all();
    assert!(
        lines
            .iter()
            .any(|l| l == "drain deadline passed: 1 request(s) or connection(s) cut"),
        "the deploy reports the cut: {lines:#?}"
    );
}

#[test]
fn a_websocket_outlives_a_take_over_until_the_drain_deadline() {
    // Longer than the 10 s a stopping supervisor gives its clients: only the drain timeout
    // keeps the socket open this long.
    const LONG_DRAIN: Duration = Duration::from_secs(12);
    let mut app = App::new("chat");
    app.tweak = |spec| spec.drain_timeout = LONG_DRAIN;
    let mut supervisor = app.serving(&["v1"]);
    let mut ws = WebSocket::open(app.listen).expect("a WebSocket to v1");
    assert_eq!(ws.echo("before").as_deref(), Ok("before"));
    let log_path = supervisor.log_path.clone();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    std::thread::scope(|s| {
        let taking_over = s.spawn(|| supervisor.take_over());
        wait_until("the new supervisor to serve", ROLLOUT, || {
            log().contains("handed-over socket(s): closing")
        });
        let handed = Instant::now();
        app.wait_serving("v1");
        let past_ten_seconds = handed + Duration::from_millis(10_500);
        ws.keep_echoing(
            past_ten_seconds,
            Duration::from_millis(200),
            (handed, "the hand-over"),
            LONG_DRAIN,
        );
        let cut = ws.wait_cut(handed + LONG_DRAIN + CUT_MARGIN);
        assert!(
            cut.is_ok(),
            "not cut by the drain deadline ({:?} after the hand-over): {cut:?}",
            handed.elapsed()
        );
        taking_over
            .join()
            .expect("the old supervisor exits once the socket is cut");
    });
    let log = log();
    assert!(
        log.contains("shut down 1 client connection(s) still open after 12s"),
        "{log}"
    );
    let mut fresh = WebSocket::open(app.listen).expect("a WebSocket through the new supervisor");
    assert_eq!(fresh.echo("after").as_deref(), Ok("after"));
}
