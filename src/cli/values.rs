//! Parsers of flag values shared by the deploy verbs: durations, byte rates, sizes, headers.

use std::time::Duration;

/// Seconds as a plain number (`10`, `1.5`, v1) or a humantime duration (`10s`, `1m30s`, v2).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{text:?} is not a duration: use seconds (10, 1.5) or 10s, 2m"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}): use seconds (10, 1.5) or 10s, 2m"))
}

/// A byte rate: `1M` = 10^6, `1MiB` = 2^20, K/G/T likewise, an optional `B`, any case.
pub fn parse_bandwidth(text: &str) -> Result<u64, String> {
    parse_bytes(text).ok_or_else(|| {
        format!("{text:?} is not a byte rate: use e.g. 500K, 1M, 1MiB or plain bytes")
    })
}

/// A size, in the units of [`parse_bandwidth`]: `16GiB`, `500M`, `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    parse_bytes(text)
        .ok_or_else(|| format!("{text:?} is not a size: use e.g. 500M, 16GiB or plain bytes"))
}

fn parse_bytes(text: &str) -> Option<u64> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let factor: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * factor;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return None;
    }
    Some(bytes as u64)
}

/// An extra request header, `NAME=VALUE`.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("{text:?} is not a header: write NAME=VALUE")),
    }
}
