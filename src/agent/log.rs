//! The log of one agent run: a readable line per step on stderr, and a capped copy for hooks.
//!
//! stretcher hands the whole log of the run to every success/failure command on stdin; a huge
//! rsync listing must not exhaust memory, so the copy keeps only the last `cap` bytes.

use std::collections::VecDeque;
use std::fmt::Display;
use std::io::Write;
use std::sync::Mutex;
use std::time::SystemTime;

/// Default cap for the copy of the log handed to hooks.
pub const DEFAULT_CAP: usize = 1 << 20;

/// Collects the lines of one run. Shared by reference between the steps of the run.
#[derive(Debug)]
pub struct RunLog {
    kept: Mutex<Kept>,
    cap: usize,
    echo: bool,
}

/// The lines kept so far (the newest `cap` bytes), and whether older ones were dropped.
#[derive(Debug, Default)]
struct Kept {
    lines: VecDeque<String>,
    bytes: usize,
    dropped: bool,
}

impl RunLog {
    /// A log that echoes every line to stderr and keeps the last `cap` bytes.
    pub fn new(cap: usize) -> RunLog {
        RunLog {
            kept: Mutex::new(Kept::default()),
            cap,
            echo: true,
        }
    }

    /// A log that only keeps lines (for tests and for nested runs that print elsewhere).
    pub fn quiet(cap: usize) -> RunLog {
        RunLog {
            kept: Mutex::new(Kept::default()),
            cap,
            echo: false,
        }
    }

    /// Records one step: `cutover: MSG` on stderr, a timestamped line in the kept copy.
    pub fn line(&self, msg: impl Display) {
        let msg = msg.to_string();
        if self.echo {
            // One write per line so that concurrent writers (rsync, hooks) never split it.
            let _ = std::io::stderr().write_all(format!("cutover: {msg}\n").as_bytes());
        }
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now());
        self.keep(format!("{stamp} {msg}\n"));
    }

    /// Keeps output of a child process (rsync, a pre/post hook) verbatim, without echoing it.
    pub fn output(&self, text: &str) {
        if !text.is_empty() {
            let mut text = text.to_owned();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            self.keep(text);
        }
    }

    /// The kept copy, oldest first; starts with a marker when older lines were dropped.
    pub fn contents(&self) -> String {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(kept.bytes + 64);
        if kept.dropped {
            out.push_str("[cutover: earlier lines of this log were dropped to keep it small]\n");
        }
        for line in &kept.lines {
            out.push_str(line);
        }
        out
    }

    fn keep(&self, mut text: String) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if text.len() > self.cap {
            // Keep the end of an oversized chunk, cut on a character boundary.
            let mut cut = text.len() - self.cap;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text.drain(..cut);
            kept.dropped = true;
        }
        kept.bytes += text.len();
        kept.lines.push_back(text);
        while kept.bytes > self.cap {
            match kept.lines.pop_front() {
                Some(old) => {
                    kept.bytes -= old.len();
                    kept.dropped = true;
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_end_when_over_the_cap() {
        let log = RunLog::quiet(64);
        for i in 0..100 {
            log.output(&format!("line {i}"));
        }
        let text = log.contents();
        assert!(text.starts_with("[cutover: earlier lines"));
        assert!(text.ends_with("line 99\n"));
        assert!(!text.contains("line 1\n"));
        assert!(text.len() < 64 + 80);
    }

    #[test]
    fn an_oversized_chunk_keeps_its_tail() {
        let log = RunLog::quiet(8);
        log.output("0123456789abcdef");
        assert!(log.contents().ends_with("abcdef\n"));
    }
}
