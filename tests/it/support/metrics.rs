//! A supervisor's admin address seen from outside: scrape `/metrics` over real HTTP, lint it with
//! the Prometheus project's own `promtool check metrics`, and read its values with a real
//! text-format parser (`prometheus-parse`).

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use prometheus_parse::{Sample, Scrape, Value};

use super::request;

/// `--metrics-listen ADDR` for a supervisor started by the harness.
pub fn listen_on(addr: SocketAddr) -> impl FnOnce(&mut Command) {
    move |command| {
        command.arg("--metrics-listen").arg(addr.to_string());
    }
}

/// The raw text of `/metrics`; an error unless it is answered 200 in the text format.
pub fn scrape_text(addr: SocketAddr) -> Result<String, String> {
    let answer = request::get(addr, "/metrics")?;
    if answer.status != 200 {
        return Err(format!(
            "/metrics answered {}: {}",
            answer.status, answer.body
        ));
    }
    let content_type = answer.header("content-type").unwrap_or("");
    if !content_type.starts_with("text/plain; version=0.0.4") {
        return Err(format!("/metrics is {content_type:?}, not the text format"));
    }
    Ok(answer.body)
}

/// `/metrics`, parsed.
pub fn scrape(addr: SocketAddr) -> Scrape {
    let text = scrape_text(addr).unwrap_or_else(|e| panic!("scraping {addr}: {e}"));
    parse(&text)
}

/// `text` in the exposition format, parsed.
pub fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not the text format ({e}):\n{text}"))
}

/// What `promtool check metrics` says of `text`: the format and Prometheus' naming rules.
/// Panics when promtool is missing (Debian package `prometheus`; tests/run.sh installs it).
pub fn promtool_check(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package `prometheus`; tests/run.sh installs it)");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("wait for promtool");
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}

/// The samples named `name` whose labels include every one of `labels`.
pub fn samples<'a>(
    scrape: &'a Scrape,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    scrape.samples.iter().filter(move |s| {
        s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
    })
}

/// The value of the one counter or gauge `name` with `labels` (0 when there is none yet).
#[track_caller]
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples(scrape, name, labels).collect();
    assert!(
        found.len() <= 1,
        "{name} {labels:?}: {} samples",
        found.len()
    );
    match found.first().map(|s| &s.value) {
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        Some(other) => panic!("{name} {labels:?} is not a plain value: {other:?}"),
        None => 0.0,
    }
}

/// The one histogram `name` with `labels`: its count and its buckets (upper bound, cumulative
/// count), `+Inf` last.
#[track_caller]
pub fn histogram(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> (f64, Vec<(f64, f64)>) {
    let found: Vec<&Sample> = samples(scrape, name, labels).collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    match &found[0].value {
        Value::Histogram(buckets) => {
            let buckets: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
            let count = buckets.last().map_or(0.0, |b| b.1);
            (count, buckets)
        }
        other => panic!("{name} {labels:?} is not a histogram: {other:?}"),
    }
}
