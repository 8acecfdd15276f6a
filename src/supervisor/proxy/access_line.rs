//! One access-log line: a request as its line says it, formatted as one JSON object (with the
//! time of day written from a per-buffer clock that formats the date once per second).

use std::io::Write;
use std::time::{Duration, SystemTime};

/// One request as its line says it. `release` and `slot` are `None` when no instance answered
/// (the proxy's own 502 or 503).
#[derive(Debug)]
pub(super) struct Line<'a> {
    pub release: Option<&'a str>,
    pub slot: Option<&'static str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    pub request_id: &'a [u8],
    pub client: &'a [u8],
}

/// The time of day as a line says it, its date and seconds formatted once per second.
#[derive(Debug, Default)]
pub(super) struct Clock {
    /// Seconds since the epoch of `text`.
    second: u64,
    /// `2026-12-03T19:20:01`: RFC 3339 up to the seconds.
    text: String,
}

impl Clock {
    /// Writes `now` as `2026-12-03T19:20:01.123Z`.
    pub(super) fn write(&mut self, out: &mut Vec<u8>, now: SystemTime) {
        let since_epoch = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let second = since_epoch.as_secs();
        if self.text.is_empty() || second != self.second {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            self.text = text.trim_end_matches('Z').to_owned();
            self.second = second;
        }
        out.extend_from_slice(self.text.as_bytes());
        let _ = write!(out, ".{:03}Z", since_epoch.subsec_millis());
    }
}

/// `{"time":…,"app":…,…}` and a newline, onto `out`.
pub(super) fn format_line(out: &mut Vec<u8>, clock: &mut Clock, app: &str, line: &Line<'_>) {
    out.extend_from_slice(b"{\"time\":\"");
    clock.write(out, SystemTime::now());
    out.extend_from_slice(b"\",\"app\":");
    json_string(out, app.as_bytes());
    out.extend_from_slice(b",\"release\":");
    match line.release {
        Some(release) => json_string(out, release.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"slot\":");
    match line.slot {
        Some(slot) => json_string(out, slot.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"method\":");
    json_string(out, line.method.as_bytes());
    out.extend_from_slice(b",\"path\":");
    json_string(out, line.path.as_bytes());
    let micros = line.duration.as_micros();
    let _ = write!(
        out,
        ",\"status\":{},\"duration_ms\":{}.{:03},\"bytes\":{},\"request_id\":",
        line.status,
        micros / 1000,
        micros % 1000,
        line.bytes
    );
    json_string(out, line.request_id);
    out.extend_from_slice(b",\"client\":");
    json_string(out, line.client);
    out.extend_from_slice(b"}\n");
}

/// `bytes` as a JSON string; bytes that are not UTF-8 (a header value may hold any) become U+FFFD.
fn json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    // Most values (methods, paths, ids, addresses) need no escaping: copied as they are.
    if bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    if serde_json::to_writer(&mut *out, text.as_ref()).is_err() {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::supervisor::proxy) fn line(path: &str) -> Line<'_> {
        Line {
            release: Some("1.4.2"),
            slot: Some("canary"),
            method: "GET",
            path,
            status: 200,
            duration: Duration::from_micros(1500),
            bytes: 12,
            request_id: b"abc",
            client: b"127.0.0.1",
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let mut out = Vec::new();
        format_line(
            &mut out,
            &mut Clock::default(),
            "shop",
            &line("/a?q=\"x\"\\"),
        );
        assert_eq!(out.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(value["app"], "shop");
        assert_eq!(value["release"], "1.4.2");
        assert_eq!(value["slot"], "canary");
        assert_eq!(value["path"], "/a?q=\"x\"\\");
        assert_eq!(value["duration_ms"], 1.5);
        assert_eq!(value["bytes"], 12);
        assert!(humantime::parse_rfc3339(value["time"].as_str().expect("time")).is_ok());
    }

    #[test]
    fn the_clock_writes_what_humantime_writes_across_seconds() {
        let mut clock = Clock::default();
        for millis in [
            0,
            999,
            1000,
            1_764_790_801_123,
            1_764_790_801_999,
            1_764_790_802_000,
        ] {
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(millis);
            let mut out = Vec::new();
            clock.write(&mut out, at);
            let expected = humantime::format_rfc3339_millis(at).to_string();
            assert_eq!(String::from_utf8(out).expect("UTF-8"), expected);
        }
    }

    #[test]
    fn control_characters_are_escaped_and_plain_text_copied() {
        for text in ["/plain?a=1", "/tab\there", "/nl\n", "/del\u{7f}", "/é"] {
            let mut out = Vec::new();
            json_string(&mut out, text.as_bytes());
            let back: String = serde_json::from_slice(&out).expect("a JSON string");
            assert_eq!(back, text);
        }
    }

    #[test]
    fn no_instance_is_null_and_bytes_that_are_not_utf8_stay_json() {
        let mut out = Vec::new();
        let mut no_instance = line("/");
        no_instance.release = None;
        no_instance.slot = None;
        no_instance.request_id = b"id\xff";
        format_line(&mut out, &mut Clock::default(), "shop", &no_instance);
        let value: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert!(value["release"].is_null() && value["slot"].is_null());
        assert_eq!(value["request_id"], "id\u{fffd}");
    }
}
