//! `cutover logs APP [-f] [-n LINES] [--json]`: the last lines of each instance's log, `[instance]`
//! first, or one JSON object per line (`{"instance", "line"}`, JSON lines, `-f` too).
//!
//! The supervisor only says where the files are (instances write straight to them, never through
//! the supervisor); this verb reads them. `-f` follows by polling sizes: simple and good enough
//! for a person watching, and it notices new instances after a deploy by asking again.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use super::remote;
use super::GlobalArgs;
use crate::protocol::{LogsRequest, Request, Response};

/// How often `-f` looks for new data, and how often for new log files.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
const FOLLOW_RESCAN: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The app
    pub app: String,
    /// Keep printing new lines as they are written (Ctrl-C to stop)
    #[arg(short, long)]
    pub follow: bool,
    /// How many lines to show from the end of each log
    #[arg(short = 'n', long, default_value_t = 20, value_name = "LINES")]
    pub lines: usize,
    /// One JSON object per log line ({"instance", "line"}), a stream under -f too (JSON lines)
    #[arg(long)]
    pub json: bool,
}

/// How each log line is written out.
#[derive(Debug, Clone, Copy)]
enum Format {
    /// `[instance] line`
    Prefixed,
    /// `{"instance":"…","line":"…"}`
    JsonLines,
}

pub fn run(args: LogsArgs, global: &GlobalArgs) -> ExitCode {
    let files = match log_files(global, &args.app) {
        Ok(files) => files,
        Err(code) => return code,
    };
    let format = if args.json {
        Format::JsonLines
    } else {
        Format::Prefixed
    };
    let mut out = io::stdout().lock();
    // Where each file has been read up to, for `-f`.
    let mut offsets = BTreeMap::new();
    for file in &files {
        match tail(file, args.lines) {
            Ok((text, end)) => {
                write_lines(&mut out, format, &instance_name(file), &text);
                offsets.insert(file.clone(), end);
            }
            Err(err) => eprintln!("cutover: could not read {}: {err}", file.display()),
        }
    }
    if files.is_empty() {
        eprintln!("cutover: {} has no instance logs yet", args.app);
    }
    if !args.follow {
        return ExitCode::SUCCESS;
    }
    let _ = out.flush();
    follow(global, &args.app, format, offsets)
}

fn log_files(global: &GlobalArgs, app: &str) -> Result<Vec<PathBuf>, ExitCode> {
    let request = Request::Logs(LogsRequest {
        app: app.to_owned(),
    });
    match remote::call(global, request, |_| {}) {
        Ok(Response::Logs(logs)) => Ok(logs.files),
        Ok(other) => Err(remote::unexpected("logs", &other)),
        Err(code) => Err(code),
    }
}

/// Prints what is appended to the known files, and picks up files of new instances.
fn follow(
    global: &GlobalArgs,
    app: &str,
    format: Format,
    mut offsets: BTreeMap<PathBuf, u64>,
) -> ExitCode {
    let mut rescanned = Instant::now();
    loop {
        if rescanned.elapsed() >= FOLLOW_RESCAN {
            rescanned = Instant::now();
            // A supervisor that went away ends the follow with its error.
            match log_files(global, app) {
                Ok(files) => {
                    for file in files {
                        // A new instance: show it from its start.
                        offsets.entry(file).or_insert(0);
                    }
                }
                Err(code) => return code,
            }
        }
        let mut out = io::stdout().lock();
        for (file, offset) in offsets.iter_mut() {
            if let Ok(text) = read_new(file, offset) {
                write_lines(&mut out, format, &instance_name(file), &text);
            }
        }
        if out.flush().is_err() {
            // stdout closed (`| head`): nothing more to do.
            return ExitCode::SUCCESS;
        }
        drop(out);
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// The last `lines` lines of `path`, and the offset its end was at.
fn tail(path: &Path, lines: usize) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let end = file.seek(SeekFrom::End(0))?;
    // Read backwards in chunks until enough newlines are in hand, so a huge log costs little.
    const CHUNK: u64 = 64 * 1024;
    let mut start = end;
    let mut buf: Vec<u8> = Vec::new();
    while start > 0 && buf.iter().filter(|&&b| b == b'\n').count() <= lines {
        let from = start.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        start = from;
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let keep = &all[all.len().saturating_sub(lines)..];
    let mut out = keep.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok((out, end))
}

/// Complete lines appended to `path` since `offset`; a file that shrank was rotated or
/// truncated, so it is read again from its start.
fn read_new(path: &Path, offset: &mut u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len < *offset {
        *offset = 0;
    }
    if len == *offset {
        return Ok(String::new());
    }
    file.seek(SeekFrom::Start(*offset))?;
    let mut buf = Vec::new();
    file.take(len - *offset).read_to_end(&mut buf)?;
    // Hold back a partial last line until its newline arrives.
    let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    *offset += complete as u64;
    Ok(String::from_utf8_lossy(&buf[..complete]).into_owned())
}

fn instance_name(path: &Path) -> String {
    path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

fn write_lines(out: &mut impl Write, format: Format, instance: &str, text: &str) {
    for line in text.lines() {
        let _ = match format {
            Format::Prefixed => writeln!(out, "[{instance}] {line}"),
            Format::JsonLines => writeln!(
                out,
                "{}",
                serde_json::json!({ "instance": instance, "line": line })
            ),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_and_follow_reads_only_whole_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop-1.log");
        let text: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let (last, mut end) = tail(&path, 3).unwrap();
        assert_eq!(last, "line 9997\nline 9998\nline 9999\n");

        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"next\npart").unwrap();
        assert_eq!(read_new(&path, &mut end).unwrap(), "next\n");
        file.write_all(b"ial\n").unwrap();
        assert_eq!(read_new(&path, &mut end).unwrap(), "partial\n");
        assert_eq!(instance_name(&path), "shop-1");
    }

    #[test]
    fn json_lines_are_one_object_per_log_line_with_quotes_escaped() {
        let mut out = Vec::new();
        write_lines(&mut out, Format::JsonLines, "shop-1", "say \"hi\"\nbye\n");
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                serde_json::json!({ "instance": "shop-1", "line": "say \"hi\"" }),
                serde_json::json!({ "instance": "shop-1", "line": "bye" }),
            ]
        );
    }
}
