//! The latency histogram of a backend's requests: fixed memory, lock-free recording, and
//! quantiles of the difference of two readings (what the canary analysis judges).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency histogram, log-linear: [`SUB_BUCKETS`] buckets per power of two of microseconds (exact
/// below that many), so fixed memory, lock-free recording, and quantiles within 1/8 (12.5 %) —
/// fine enough to hold a canary's p99 to a `max_p99_ratio` of 1.2.
#[derive(Debug)]
pub(super) struct Histogram {
    buckets: [AtomicU64; BUCKETS],
}

/// log2 of the buckets per power of two.
const SUB_BITS: u32 = 3;
const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// Up to 2^40 µs (12 days): every latency a request can have.
const BUCKETS: usize = (40 - SUB_BITS as usize + 1) * SUB_BUCKETS;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The bucket counts of all of `histograms` together.
    pub fn counts(histograms: &[&Histogram]) -> Vec<u64> {
        (0..BUCKETS)
            .map(|i| {
                histograms
                    .iter()
                    .map(|h| h.buckets[i].load(Ordering::Relaxed))
                    .sum()
            })
            .collect()
    }
}

/// The upper bound of the bucket holding the `q` quantile of a histogram's bucket `counts` (as in
/// `BackendStats::latency`, or the difference of two readings), in microseconds; 0 if empty.
pub fn quantile(counts: &[u64], q: f64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            // Never 0, which means "no request".
            return upper_bound(i).max(1);
        }
    }
    upper_bound(BUCKETS - 1)
}

/// `counts` (as in `BackendStats::latency`) re-cut at `bounds_us` (ascending, microseconds), the
/// way Prometheus' histograms count: for each bound, the requests at or below it, cumulative; and
/// the sum of all latencies in seconds. Each bucket of `counts` goes whole to the first bound at
/// or above its upper end: a request in the bucket a bound cuts through (at most 1/8 below the
/// bound) is counted at the next bound up, so `le` never counts a request slower than it. The
/// sum takes each request at its bucket's middle, within 1/16 (6.25 %).
pub fn recut(counts: &[u64], bounds_us: &[u64]) -> (Vec<u64>, f64) {
    let mut cumulative = vec![0; bounds_us.len()];
    let mut sum_us = 0.0;
    for (bucket, &count) in counts.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let upper = upper_bound(bucket);
        let lower = if bucket == 0 {
            0
        } else {
            upper_bound(bucket - 1) + 1
        };
        sum_us += count as f64 * (lower + upper) as f64 / 2.0;
        if let Some(first) = bounds_us.iter().position(|&bound| upper <= bound) {
            for n in &mut cumulative[first..] {
                *n += count;
            }
        }
    }
    (cumulative, sum_us / 1e6)
}

fn bucket_of(us: u64) -> usize {
    if us < SUB_BUCKETS as u64 {
        return us as usize;
    }
    // `us` is in [2^octave, 2^(octave+1)), split in SUB_BUCKETS equal steps.
    let octave = 63 - us.leading_zeros();
    let sub = ((us >> (octave - SUB_BITS)) as usize) & (SUB_BUCKETS - 1);
    let group = (octave - SUB_BITS + 1) as usize;
    (group * SUB_BUCKETS + sub).min(BUCKETS - 1)
}

/// The largest latency (in µs) that falls in `bucket`.
fn upper_bound(bucket: usize) -> u64 {
    if bucket < SUB_BUCKETS {
        return bucket as u64;
    }
    let (group, sub) = (bucket / SUB_BUCKETS, (bucket % SUB_BUCKETS) as u64);
    let octave = group as u32 + SUB_BITS - 1;
    let step = 1u64 << (octave - SUB_BITS);
    (1u64 << octave) + step * (sub + 1) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        let mut previous = None;
        for us in (0..20_000).chain([65_535, 65_536, 1_000_000, 86_400_000_000]) {
            let bucket = bucket_of(us);
            let bound = upper_bound(bucket);
            assert!(bound >= us, "{us} above its bucket's bound {bound}");
            assert!(
                bound <= us + us / 8,
                "{us}: bound {bound} more than 1/8 above"
            );
            if let Some((before, before_bucket)) = previous {
                assert!(
                    bucket >= before_bucket,
                    "{us} in a lower bucket than {before}"
                );
                if bucket > before_bucket && before + 1 == us {
                    assert_eq!(upper_bound(before_bucket), us - 1, "no gap below {us}");
                }
            }
            previous = Some((us, bucket));
        }
        assert_eq!(
            bucket_of(u64::MAX),
            BUCKETS - 1,
            "the longest fall in the last"
        );
    }

    #[test]
    fn recut_counts_at_or_below_each_bound_and_never_a_slower_request() {
        let h = Histogram::default();
        for ms in [1, 4, 6, 20, 20, 3_000] {
            h.record(Duration::from_millis(ms));
        }
        // Just below 5 ms, in the bucket 5 ms cuts through: counted at the next bound.
        h.record(Duration::from_micros(4_900));
        let counts = Histogram::counts(&[&h]);
        let (cumulative, sum) = recut(&counts, &[5_000, 10_000, 25_000, 10_000_000]);
        assert_eq!(cumulative, [2, 4, 6, 7]);
        let exact = (1 + 4 + 6 + 20 + 20 + 3_000) as f64 / 1e3 + 0.0049;
        assert!((sum - exact).abs() <= exact / 16.0, "{sum} against {exact}");
    }

    #[test]
    fn a_p99_a_fifth_slower_is_told_apart() {
        let p99 = |ms| {
            let h = Histogram::default();
            for _ in 0..100 {
                h.record(Duration::from_millis(ms));
            }
            quantile(&Histogram::counts(&[&h]), 0.99) as f64
        };
        let ratio = p99(12) / p99(10);
        assert!(
            (1.15..=1.25).contains(&ratio),
            "12 ms against 10 ms: {ratio:.3}"
        );
    }

    #[test]
    fn quantiles_come_from_the_right_buckets() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(100));
        }
        h.record(Duration::from_millis(50));
        h.record(Duration::from_millis(50));
        let other = Histogram::default();
        other.record(Duration::from_micros(100));
        let both = [&h, &other];
        let q = |q| quantile(&Histogram::counts(&both), q);
        assert!((100..=112).contains(&q(0.5)), "{}", q(0.5));
        assert!((100..=112).contains(&q(0.98)));
        assert!(q(0.99) >= 50_000);
        assert_eq!(
            quantile(&Histogram::counts(&[&Histogram::default()]), 0.99),
            0
        );
    }
}
