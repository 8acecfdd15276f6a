//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` once per family,
//! then its samples, label values escaped. What Prometheus, promtool and every scraper read.
//!
//! Written here rather than with a client library: the values are read at scrape time from
//! counters the supervisor keeps anyway, so a library's own metric types would go unused, and
//! `prometheus-client` writes only OpenMetrics, which `promtool check metrics` cannot lint.

use std::fmt::Write;

/// A family's type, as `# TYPE` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Label names and values of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// The page being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its samples must follow before the next one starts.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.word());
    }

    /// One sample of a counter or gauge (`name` is the family's).
    pub fn sample(&mut self, name: &str, labels: Labels, value: f64) {
        self.text.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.text, " {}", number(value));
    }

    /// One histogram's samples: `buckets` holds each upper bound with the count of observations
    /// at or below it (cumulative, the `+Inf` bucket left out: it is `count`).
    pub fn histogram(
        &mut self,
        name: &str,
        labels: Labels,
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        for (bound, n) in buckets {
            let _ = write!(self.text, "{name}_bucket");
            self.labels(labels, Some(&number(*bound)));
            let _ = writeln!(self.text, " {n}");
        }
        let _ = write!(self.text, "{name}_bucket");
        self.labels(labels, Some("+Inf"));
        let _ = writeln!(self.text, " {count}");
        let _ = write!(self.text, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.text, " {}", number(sum));
        let _ = write!(self.text, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.text, " {count}");
    }

    pub fn finish(self) -> String {
        self.text
    }

    fn labels(&mut self, labels: Labels, le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.text.push('{');
        let mut first = true;
        for (name, value) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
            if !first {
                self.text.push(',');
            }
            first = false;
            let _ = write!(self.text, "{name}=\"");
            for c in value.chars() {
                match c {
                    '\\' => self.text.push_str("\\\\"),
                    '"' => self.text.push_str("\\\""),
                    '\n' => self.text.push_str("\\n"),
                    c => self.text.push(c),
                }
            }
            self.text.push('"');
        }
        self.text.push('}');
    }
}

/// A value as the format writes it: whole numbers without a fraction, `+Inf` for infinity.
fn number(value: f64) -> String {
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    if value.is_nan() {
        return "NaN".to_owned();
    }
    format!("{value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escapes() {
        let mut page = Exposition::default();
        page.family("x_total", Kind::Counter, "Things.\nCounted \\ here");
        page.sample("x_total", &[("app", "a\"b\\c\nd")], 3.0);
        page.family("t_seconds", Kind::Histogram, "Time.");
        page.histogram(
            "t_seconds",
            &[("app", "a")],
            &[(0.005, 1), (0.5, 2)],
            0.25,
            3,
        );
        let text = page.finish();
        assert_eq!(
            text,
            "# HELP x_total Things.\\nCounted \\\\ here\n# TYPE x_total counter\n\
             x_total{app=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP t_seconds Time.\n# TYPE t_seconds histogram\n\
             t_seconds_bucket{app=\"a\",le=\"0.005\"} 1\n\
             t_seconds_bucket{app=\"a\",le=\"0.5\"} 2\n\
             t_seconds_bucket{app=\"a\",le=\"+Inf\"} 3\n\
             t_seconds_sum{app=\"a\"} 0.25\nt_seconds_count{app=\"a\"} 3\n"
        );
    }
}
