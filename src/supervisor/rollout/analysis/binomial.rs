//! "Clearly": when a count of events (errors, slow requests) is more than a rate at the limit
//! explains, by a one-sided binomial test, so that the canary analysis fails a step on evidence
//! and not on the few unlucky requests any window holds.

/// How unlikely a count must be for a release exactly at the limit before the count is clearly
/// over it: once in this many tries. The analysis looks every 250 ms, so a test once in a hundred
/// would be passed by chance within a step.
pub const DOUBT: f64 = 10_000.0;

/// Whether `count` events in `n` tries are clearly more than a rate of `p` gives: a release at
/// exactly that rate would show as many less than once in [`DOUBT`] tries.
pub fn clearly_above(count: u64, n: u64, p: f64) -> bool {
    if count == 0 || p >= 1.0 {
        return false;
    }
    if p <= 0.0 {
        return true;
    }
    if count as f64 <= n as f64 * p {
        return false;
    }
    // P(X >= count) for X ~ Binomial(n, p), summed from its first term: the terms fall from
    // there on, as `count` is above the mean; each is the one before times (n-i)/(i+1)·p/(1-p).
    let (n, k) = (n as f64, count.min(n) as f64);
    let mut term = binomial_pmf(n, k, p);
    let odds = p / (1.0 - p);
    let mut tail = 0.0;
    let mut i = k;
    while term > 0.0 && i <= n {
        tail += term;
        if tail * DOUBT >= 1.0 {
            return false;
        }
        if term < tail * 1e-12 {
            break;
        }
        term *= (n - i) / (i + 1.0) * odds;
        i += 1.0;
    }
    true
}

/// P(X = k) for X ~ Binomial(n, p), 0 < p < 1, accurate for any n a step can see: Loader's
/// saddle-point form ("Fast and accurate computation of binomial probabilities", 2000), as R's
/// `dbinom`, where ln C(n, k) taken as a difference of ln-factorials would lose every digit to
/// cancellation once n is in the millions.
fn binomial_pmf(n: f64, k: f64, p: f64) -> f64 {
    if k == n {
        return (n * p.ln()).exp();
    }
    let q = 1.0 - p;
    let exponent = stirling_error(n)
        - stirling_error(k)
        - stirling_error(n - k)
        - bd0(k, n * p)
        - bd0(n - k, n * q);
    exponent.exp() * (n / (2.0 * std::f64::consts::PI * k * (n - k))).sqrt()
}

/// ln(n!) − ln(√(2πn)·(n/e)ⁿ): what Stirling's formula misses, for whole n ≥ 1.
fn stirling_error(n: f64) -> f64 {
    if n < 16.0 {
        let ln_factorial: f64 = (2..=n as u64).map(|i| (i as f64).ln()).sum();
        return ln_factorial - (n + 0.5) * n.ln() + n - 0.5 * (2.0 * std::f64::consts::PI).ln();
    }
    let n2 = n * n;
    (1.0 / 12.0 - (1.0 / 360.0 - 1.0 / (1260.0 * n2)) / n2) / n
}

/// x·ln(x/m) + m − x, the deviance of seeing `x` where `m` was expected, without cancellation.
fn bd0(x: f64, m: f64) -> f64 {
    x * ((x - m) / m).ln_1p() + m - x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest count that is clearly above `p` in `n`.
    fn threshold(n: u64, p: f64) -> u64 {
        (0..=n)
            .find(|&k| clearly_above(k, n, p))
            .unwrap_or(u64::MAX)
    }

    #[test]
    fn thresholds_are_the_binomial_tails_below_one_in_ten_thousand() {
        // Exact tails (Python, lgamma sums): P(X >= k) just below 1e-4, P(X >= k-1) above.
        for (n, p, k) in [
            (3, 0.01, 3),
            (20, 0.01, 4),
            (100, 0.01, 7),
            (200, 0.01, 10),
            (1_000, 0.01, 25),
            (10_000, 0.01, 140),
            (1_000, 0.001, 7),
            (200, 0.05, 24),
        ] {
            assert_eq!(threshold(n, p), k, "{n} tries at {p}");
        }
    }

    #[test]
    fn millions_of_requests_keep_their_precision() {
        // Mean 10,000, standard deviation 99.5; the exact tail crosses 1e-4 at 10,373.
        assert_eq!(threshold(1_000_000, 0.01), 10_373);
        assert!(!clearly_above(10_000, 1_000_000, 0.01));
        assert!(clearly_above(50_000_000, 100_000_000, 0.49));
        assert!(!clearly_above(49_010_000, 100_000_000, 0.49));
    }

    #[test]
    fn limits_of_none_and_all() {
        assert!(
            clearly_above(1, 1_000_000, 0.0),
            "any error is over a 0% limit"
        );
        assert!(!clearly_above(0, 10, 0.0));
        assert!(!clearly_above(10, 10, 1.0), "nothing is over a 100% limit");
        assert!(clearly_above(10, 10, 0.5) == (0.5f64.powi(10) * DOUBT < 1.0));
    }
}
