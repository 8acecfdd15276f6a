//! The manifest's `app.canary:` section: the traffic steps of a canary release and the limits
//! its analysis holds the new version to.
//!
//! Shares are written as percentages (`5%`, `0.1%`) and kept in parts per million, so a step of
//! 0.1 % is exact and weighted routing needs no floating point per request.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A share of traffic or a rate, in parts per million (100 % = 1,000,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Share(u32);

impl Share {
    pub const WHOLE: Share = Share(1_000_000);
    pub const NONE: Share = Share(0);

    pub fn from_ppm(ppm: u32) -> Share {
        Share(ppm.min(Share::WHOLE.0))
    }

    pub fn ppm(self) -> u32 {
        self.0
    }

    /// `part / whole` as a share (0 when `whole` is 0).
    pub fn ratio(part: u64, whole: u64) -> Share {
        if whole == 0 {
            return Share::NONE;
        }
        let ppm = (u128::from(part) * 1_000_000 / u128::from(whole)).min(1_000_000);
        Share(ppm as u32)
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Shortest exact form: 5%, 0.1%, 12.345%.
        let whole = self.0 / 10_000;
        let frac = self.0 % 10_000;
        if frac == 0 {
            write!(f, "{whole}%")
        } else {
            let digits = format!("{frac:04}");
            write!(f, "{whole}.{}%", digits.trim_end_matches('0'))
        }
    }
}

impl std::str::FromStr for Share {
    type Err = String;

    fn from_str(text: &str) -> Result<Share, String> {
        let bad = || format!("{text:?} is not a percentage like 5% or 0.1%");
        let number = text.trim().strip_suffix('%').ok_or_else(bad)?.trim();
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        if frac.len() > 4 {
            return Err(format!(
                "{text:?} is finer than 0.0001%: use at most four decimals"
            ));
        }
        let int: u64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let frac: u64 = format!("{frac:0<4}").parse().map_err(|_| bad())?;
        let ppm = int * 10_000 + frac;
        if ppm > 1_000_000 {
            return Err(format!("{text:?} is more than 100%"));
        }
        Ok(Share(ppm as u32))
    }
}

impl Serialize for Share {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Share, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How a canary release goes: its steps, its pauses and the limits of its analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// Shares of traffic the new version gets, one step after the other; then it takes all.
    #[serde(default = "defaults::steps")]
    pub steps: Vec<Share>,
    /// How long each step runs before it is judged.
    #[serde(default = "defaults::pause", with = "humantime_serde")]
    pub pause: Duration,
    /// Highest error rate (5xx and failed connects over requests) the new version may show.
    #[serde(default = "defaults::max_error_rate")]
    pub max_error_rate: Share,
    /// Highest ratio of the new version's p99 latency to the stable version's.
    #[serde(default = "defaults::max_p99_ratio")]
    pub max_p99_ratio: f64,
    /// How far the new version's p99 may exceed the stable one's whatever their ratio: a
    /// millisecond more on a 1 ms p99 is noise, not a regression.
    #[serde(default = "defaults::min_p99_delta", with = "humantime_serde")]
    pub min_p99_delta: Duration,
    /// Requests the new version must have answered in a step before it is judged.
    #[serde(default = "defaults::min_requests")]
    pub min_requests: u64,
    /// Whether a step whose traffic was too light to measure a p99 by `progress_deadline`
    /// fails (`true`) or passes on its errors alone (`false`).
    #[serde(default)]
    pub require_p99: bool,
    /// Promote after the last step on a good analysis; `false` waits for `cutover promote`.
    #[serde(default = "defaults::auto_promote")]
    pub auto_promote: bool,
    /// The longest a step may go without a verdict (too little traffic, or no `promote`)
    /// before the canary is aborted: a canary never stalls silently.
    #[serde(default = "defaults::progress_deadline", with = "humantime_serde")]
    pub progress_deadline: Duration,
    /// Requests carrying this header (any value) always go to the new version: for testers.
    #[serde(default = "defaults::header")]
    pub header: String,
    /// The cookie that keeps a client on the side it first landed on.
    #[serde(default = "defaults::cookie")]
    pub cookie: String,
}

impl Default for CanarySpec {
    fn default() -> Self {
        CanarySpec {
            steps: defaults::steps(),
            pause: defaults::pause(),
            max_error_rate: defaults::max_error_rate(),
            max_p99_ratio: defaults::max_p99_ratio(),
            min_p99_delta: defaults::min_p99_delta(),
            min_requests: defaults::min_requests(),
            require_p99: false,
            auto_promote: defaults::auto_promote(),
            progress_deadline: defaults::progress_deadline(),
            header: defaults::header(),
            cookie: defaults::cookie(),
        }
    }
}

impl CanarySpec {
    /// What is wrong with this section, in the words of the manifest.
    pub fn check(&self) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err("app.canary.steps is empty: give at least one share, e.g. [5%]".into());
        }
        for pair in self.steps.windows(2) {
            if pair[1] <= pair[0] {
                return Err(format!(
                    "app.canary.steps must grow: {} comes after {}",
                    pair[1], pair[0]
                ));
            }
        }
        if let Some(step) = self
            .steps
            .iter()
            .find(|s| **s == Share::NONE || **s >= Share::WHOLE)
        {
            return Err(format!(
                "app.canary.steps: {step} is not a canary share (above 0% and below 100%)"
            ));
        }
        if !(self.max_p99_ratio.is_finite() && self.max_p99_ratio >= 1.0) {
            return Err(format!(
                "app.canary.max_p99_ratio is {}: it must be 1.0 or more",
                self.max_p99_ratio
            ));
        }
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !token(&self.header) || !token(&self.cookie) {
            return Err(format!(
                "app.canary.header {:?} and cookie {:?} must be plain names (letters, digits, - and _)",
                self.header, self.cookie
            ));
        }
        Ok(())
    }
}

mod defaults {
    use std::time::Duration;

    use super::Share;

    pub fn steps() -> Vec<Share> {
        [10_000, 100_000, 500_000]
            .into_iter()
            .map(Share::from_ppm)
            .collect()
    }
    pub fn pause() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_error_rate() -> Share {
        Share::from_ppm(10_000)
    }
    pub fn max_p99_ratio() -> f64 {
        1.5
    }
    pub fn min_p99_delta() -> Duration {
        Duration::from_millis(5)
    }
    pub fn min_requests() -> u64 {
        100
    }
    pub fn auto_promote() -> bool {
        true
    }
    pub fn progress_deadline() -> Duration {
        Duration::from_secs(600)
    }
    pub fn header() -> String {
        "x-cutover-canary".to_owned()
    }
    pub fn cookie() -> String {
        "cutover_canary".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_read_and_print_as_percentages() {
        for (text, ppm, shown) in [
            ("5%", 50_000, "5%"),
            ("0.1%", 1_000, "0.1%"),
            (" 12.5 %", 125_000, "12.5%"),
            ("100%", 1_000_000, "100%"),
            (".25%", 2_500, "0.25%"),
        ] {
            let share: Share = text.parse().unwrap();
            assert_eq!(share.ppm(), ppm, "{text}");
            assert_eq!(share.to_string(), shown);
        }
        for bad in ["5", "%", "five%", "101%", "1.00001%", "-1%"] {
            assert!(bad.parse::<Share>().is_err(), "{bad}");
        }
        assert_eq!(Share::ratio(1, 3).ppm(), 333_333);
        assert_eq!(Share::ratio(5, 0), Share::NONE);
    }

    #[test]
    fn the_section_parses_with_defaults_and_refuses_nonsense() {
        let spec: CanarySpec =
            serde_norway::from_str("steps: [0.1%, 10%, 50%]\npause: 5s\nauto_promote: false\n")
                .unwrap();
        assert_eq!(spec.steps[0].ppm(), 1_000);
        assert_eq!(spec.pause, Duration::from_secs(5));
        assert!(!spec.auto_promote);
        assert_eq!(spec.max_error_rate.to_string(), "1%");
        assert_eq!(spec.min_p99_delta, Duration::from_millis(5));
        assert!(!spec.require_p99);
        let strict: CanarySpec =
            serde_norway::from_str("min_p99_delta: 20ms\nrequire_p99: true\n").unwrap();
        assert_eq!(strict.min_p99_delta, Duration::from_millis(20));
        assert!(strict.require_p99);
        let err = serde_norway::from_str::<CanarySpec>("min_p99_delta: 5\n").unwrap_err();
        assert!(err.to_string().contains("min_p99_delta"), "{err}");
        assert!(spec.check().is_ok());
        let err = serde_norway::from_str::<CanarySpec>("stepz: [5%]\n").unwrap_err();
        assert!(err.to_string().contains("stepz"), "{err}");
        let shrinking = CanarySpec {
            steps: vec!["50%".parse().unwrap(), "10%".parse().unwrap()],
            ..CanarySpec::default()
        };
        assert!(shrinking.check().unwrap_err().contains("must grow"));
        let all = CanarySpec {
            steps: vec![Share::WHOLE],
            ..CanarySpec::default()
        };
        assert!(all.check().is_err());
    }
}
