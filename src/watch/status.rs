//! `cutover status` / `cutover watch --status`: each watch's last check, last seen version,
//! last deploy and why versions were skipped, read from the state files (no daemon needed).

use std::fmt::Write as _;
use std::path::Path;

use super::state::{self, WatchState};

/// Every watch's state under `state_dir`.
pub fn load(state_dir: &Path) -> Vec<WatchState> {
    state::load_all(state_dir)
}

/// The human-readable report; empty when no watch ever ran.
pub fn render(states: &[WatchState]) -> String {
    let mut out = String::new();
    for s in states {
        let _ = writeln!(out, "watch {} ({})", s.name, s.source);
        let check = match (&s.last_check, &s.last_check_result) {
            (Some(at), Some(result)) => format!("{at}: {result}"),
            _ => "never".to_owned(),
        };
        let _ = writeln!(out, "  last check:  {check}");
        let _ = writeln!(
            out,
            "  last seen:   {}",
            s.last_seen.as_deref().unwrap_or("-")
        );
        let _ = writeln!(
            out,
            "  deployed:    {}",
            s.deployed.as_deref().unwrap_or("-")
        );
        if let Some(r) = &s.last_result {
            let verdict = if r.ok { "ok" } else { "FAILED" };
            let _ = writeln!(
                out,
                "  last deploy: {} {verdict} at {}: {}",
                r.version, r.at, r.message
            );
        }
        if let Some(until) = &s.paused_until {
            let _ = writeln!(out, "  paused:      rate limited until {until}");
        }
        for (version, why) in &s.skipped {
            let _ = writeln!(out, "  skipped {version}: {why}");
        }
        for (version, why) in &s.failed {
            let _ = writeln!(out, "  never again {version}: failed: {why}");
        }
    }
    out
}

/// Prints the report to stdout (the lead calls this from `cutover status`).
pub fn print(state_dir: &Path) {
    print!("{}", render(&load(state_dir)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_reason_for_each_skip() {
        let text = include_str!("../../fixtures/github/watch-state-v1.json");
        let s: WatchState = serde_json::from_str(text).unwrap();
        let report = render(&[s]);
        assert!(
            report.starts_with("watch acme-shop (github acme/shop"),
            "{report}"
        );
        assert!(report.contains("last check:  2026-11-22T06:00:00Z: not modified (304)"));
        assert!(report
            .contains("skipped 1.5.0: refused: asset shop-1.5.0-linux-amd64.tar.gz has no digest"));
        assert!(report.contains("last deploy: 1.4.2 ok"));
    }
}
