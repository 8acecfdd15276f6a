//! The log of one agent run: a line per step on stderr (readable, or a tracing event under
//! `--log-format json`), and a capped copy for hooks.
//!
//! stretcher hands the whole log of the run to every success/failure command on stdin; a huge
//! rsync listing must not exhaust memory, so the copy keeps only the last `cap` bytes. The copy
//! is always plain text, whatever stderr gets: hooks read it as stretcher's.

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
    echo: Echo,
}

/// How a run's lines, and the output of the commands it runs, reach stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Not at all (tests, nested runs that print elsewhere).
    Quiet,
    /// `cutover: MSG`, and child output as it came: stretcher's lines.
    Text,
    /// As tracing events (target `cutover::agent`), which the process's subscriber formats:
    /// under `--log-format json` every line on stderr is then one JSON object.
    Events,
}

/// How bad a step's line is; only events carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Info,
    Warn,
    Error,
}

/// The lines kept so far (the newest `cap` bytes), and whether older ones were dropped.
#[derive(Debug, Default)]
struct Kept {
    lines: VecDeque<String>,
    bytes: usize,
    dropped: bool,
}

impl RunLog {
    /// A log that echoes every line to stderr as `echo` says and keeps the last `cap` bytes.
    pub fn new(cap: usize, echo: Echo) -> RunLog {
        RunLog {
            kept: Mutex::new(Kept::default()),
            cap,
            echo,
        }
    }

    /// A log that only keeps lines (for tests and for nested runs that print elsewhere).
    pub fn quiet(cap: usize) -> RunLog {
        RunLog::new(cap, Echo::Quiet)
    }

    /// How this log's lines reach stderr.
    pub fn echo(&self) -> Echo {
        self.echo
    }

    /// Records one step: `cutover: MSG` on stderr, a timestamped line in the kept copy.
    pub fn line(&self, msg: impl Display) {
        self.step(Level::Info, msg.to_string());
    }

    /// Records a step that made the run fail (an error event under `--log-format json`).
    pub fn error(&self, msg: impl Display) {
        self.step(Level::Error, msg.to_string());
    }

    /// Records a warning: `cutover: warning: MSG` (a warning event under `--log-format json`).
    pub fn warning(&self, msg: impl Display) {
        self.step(Level::Warn, format!("warning: {msg}"));
    }

    fn step(&self, level: Level, msg: String) {
        match self.echo {
            Echo::Quiet => {}
            // One write per line so that concurrent writers (rsync, hooks) never split it.
            Echo::Text => {
                let _ = std::io::stderr().write_all(format!("cutover: {msg}\n").as_bytes());
            }
            Echo::Events => match level {
                Level::Info => tracing::info!(target: "cutover::agent", "{msg}"),
                Level::Warn => tracing::warn!(target: "cutover::agent", "{msg}"),
                Level::Error => tracing::error!(target: "cutover::agent", "{msg}"),
            },
        }
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now());
        self.keep(format!("{stamp} {msg}\n"));
    }

    /// Echoes one line (or a piece of at most a line) of a child's output (rsync, a hook) to
    /// stderr as it came, or as an event naming the command (`command`), and keeps it.
    pub fn child_output(&self, command: &str, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        match self.echo {
            Echo::Quiet => {}
            Echo::Text => {
                let mut echo = bytes.to_vec();
                if echo.last() != Some(&b'\n') {
                    echo.push(b'\n');
                }
                // One write per line so that it does not interleave with the run's own lines.
                let _ = std::io::stderr().write_all(&echo);
            }
            Echo::Events => {
                let line = text.strip_suffix('\n').unwrap_or(&text);
                tracing::info!(target: "cutover::agent", command, "{line}");
            }
        }
        self.output(&text);
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
