//! The canary's judgement on the cases that matter to an operator: a few slow requests, a
//! clearly slower release, the p99 floor, errors early and late, and too little traffic.

use super::*;

/// As many buckets as the proxy keeps (any length works).
const BUCKETS: usize = 304;

/// A window of `requests` with `errors`, answered in `latencies`: (ms, how many) pairs.
fn window(requests: u64, errors: u64, latencies: &[(f64, u64)]) -> Window {
    let bounds = upper_bounds(BUCKETS);
    let mut latency = vec![0; BUCKETS];
    for &(ms, count) in latencies {
        let us = (ms * 1000.0) as u64;
        latency[bounds.iter().position(|&b| b >= us).unwrap()] += count;
    }
    Window {
        requests,
        errors,
        latency,
    }
}

/// `n` requests without an error, all answered in `ms`.
fn steady(n: u64, ms: f64) -> Window {
    window(n, 0, &[(ms, n)])
}

fn all_stages(stable: &Window, canary: &Window, spec: &CanarySpec) -> [Verdict; 3] {
    [Stage::Pause, Stage::Judged, Stage::Overdue].map(|s| judge(stable, canary, spec, s))
}

#[test]
fn a_slow_millisecond_on_a_hundred_requests_never_fails() {
    // The case: "p99 2.8ms is 2.00x the stable 1.4ms" on ~100 canary requests.
    let spec = CanarySpec::default();
    let stable = window(10_000, 0, &[(1.0, 9_850), (1.4, 150)]);
    let canary = window(100, 0, &[(1.0, 98), (2.8, 2)]);
    let [pause, judged, overdue] = all_stages(&stable, &canary, &spec);
    assert!(matches!(pause, Verdict::Wait(_)), "{pause:?}");
    let Verdict::Wait(why) = judged else {
        panic!("{judged:?}")
    };
    assert!(why.contains("100 canary and 10000 stable"), "{why}");
    assert!(why.contains("1000 each a p99 needs"), "{why}");
    // Light traffic until the deadline: passes on its errors, saying the p99 was not judged.
    let Verdict::Pass(summary) = overdue else {
        panic!("{overdue:?}")
    };
    assert!(summary.contains("p99 not judged"), "{summary}");
    let strict = CanarySpec {
        require_p99: true,
        ..CanarySpec::default()
    };
    let verdict = judge(&stable, &canary, &strict, Stage::Overdue);
    assert!(
        matches!(verdict, Verdict::Fail(ref why) if why.contains("progress_deadline 10m")),
        "{verdict:?}"
    );

    // With the evidence, twice the stable p99 is still 1.4 ms, below min_p99_delta.
    let canary = window(1_000, 0, &[(1.0, 980), (2.8, 20)]);
    let verdict = judge(&stable, &canary, &spec, Stage::Judged);
    assert!(
        matches!(verdict, Verdict::Pass(ref s) if s.contains("p99 2.8ms (stable 1.4ms)")),
        "{verdict:?}"
    );
}

#[test]
fn three_times_slower_by_twenty_milliseconds_fails_at_min_requests() {
    let spec = CanarySpec::default();
    let stable = steady(10_000, 10.0);
    // Fewer than min_requests: a slow start is not judged yet.
    let verdict = judge(&stable, &steady(60, 30.0), &spec, Stage::Pause);
    assert!(matches!(verdict, Verdict::Wait(_)), "{verdict:?}");
    let verdict = judge(&stable, &steady(100, 30.0), &spec, Stage::Pause);
    let Verdict::Fail(why) = verdict else {
        panic!("{verdict:?}")
    };
    assert!(
        why.starts_with("p99 30.7ms is 3.00x the stable 10.2ms"),
        "{why}"
    );
    assert!(
        why.contains("(max_p99_ratio 1.5) and 20.5ms above it"),
        "{why}"
    );
    assert!(
        why.ends_with(
            "100 of 100 requests took over the 15.4ms allowed, clearly more than 10 of them"
        ),
        "{why}"
    );
}

#[test]
fn a_ratio_below_the_floor_is_not_judged() {
    // 3x the stable p99, but 4 ms: within min_p99_delta 5ms.
    let stable = steady(2_000, 2.0);
    let canary = steady(2_000, 6.0);
    let spec = CanarySpec::default();
    let verdict = judge(&stable, &canary, &spec, Stage::Judged);
    assert!(matches!(verdict, Verdict::Pass(_)), "{verdict:?}");
    let tight = CanarySpec {
        min_p99_delta: Duration::from_millis(1),
        ..CanarySpec::default()
    };
    let verdict = judge(&stable, &canary, &tight, Stage::Pause);
    assert!(
        matches!(verdict, Verdict::Fail(ref why) if why.contains("min_p99_delta 1ms")),
        "{verdict:?}"
    );
}

#[test]
fn a_p99_over_the_limit_but_not_clearly_waits_and_fails_at_the_deadline() {
    // 15 of 1,000 canary requests slow: a p99 of 30 ms, but 1.5 % could be chance.
    let stable = steady(5_000, 2.0);
    let canary = window(1_000, 0, &[(2.0, 985), (30.0, 15)]);
    let [pause, judged, overdue] = all_stages(&stable, &canary, &CanarySpec::default());
    assert!(matches!(pause, Verdict::Wait(_)), "{pause:?}");
    assert!(
        matches!(judged, Verdict::Wait(ref why) if why.contains("not clearly yet")),
        "{judged:?}"
    );
    assert!(
        matches!(overdue, Verdict::Fail(ref why) if why.contains("p99 30.7ms")),
        "{overdue:?}"
    );
    // Twice as many slow ones are clear at once.
    let canary = window(1_000, 0, &[(2.0, 970), (30.0, 30)]);
    let verdict = judge(&stable, &canary, &CanarySpec::default(), Stage::Pause);
    assert!(matches!(verdict, Verdict::Fail(_)), "{verdict:?}");
}

#[test]
fn a_good_canary_passes_once_its_pause_is_over() {
    let spec = CanarySpec::default();
    let stable = window(9_000, 2, &[(1.0, 8_900), (3.0, 100)]);
    let canary = window(1_000, 1, &[(1.0, 985), (3.0, 15)]);
    let [pause, judged, overdue] = all_stages(&stable, &canary, &spec);
    assert!(
        matches!(pause, Verdict::Wait(ref why) if why.contains("end of the pause")),
        "{pause:?}"
    );
    assert_eq!(judged, overdue);
    let Verdict::Pass(summary) = judged else {
        panic!("{judged:?}")
    };
    assert_eq!(
        summary,
        "error rate 0.1% (stable 0.0222%) over 1000 requests, p99 3.1ms (stable 3.1ms)"
    );
}

#[test]
fn errors_fail_early_only_when_clearly_over_the_limit() {
    let spec = CanarySpec::default();
    let stable = steady(10_000, 1.0);
    let erring = |requests, errors| window(requests, errors, &[(1.0, requests - errors)]);
    // One 5xx among the first requests, or three in twenty, is what chance gives at 1 %.
    for (requests, errors) in [(1, 1), (5, 1), (20, 3)] {
        let verdict = judge(&stable, &erring(requests, errors), &spec, Stage::Pause);
        assert!(
            matches!(verdict, Verdict::Wait(_)),
            "{requests}/{errors}: {verdict:?}"
        );
    }
    // Four in twenty is not: failed before min_requests.
    let verdict = judge(&stable, &erring(20, 4), &spec, Stage::Pause);
    let Verdict::Fail(why) = verdict else {
        panic!("{verdict:?}")
    };
    assert_eq!(
        why,
        "error rate 20% (4 of 20 requests) is clearly above max_error_rate 1% (stable 0%)"
    );
    let verdict = judge(&stable, &erring(200, 10), &spec, Stage::Pause);
    assert!(
        matches!(verdict, Verdict::Fail(ref why) if why.contains("error rate 5%")),
        "{verdict:?}"
    );
    // Above the limit but not clearly: the step waits for more traffic, then fails.
    let over = erring(150, 2);
    let verdict = judge(&stable, &over, &spec, Stage::Judged);
    assert!(
        matches!(verdict, Verdict::Wait(ref why) if why.contains("not clearly yet")),
        "{verdict:?}"
    );
    let verdict = judge(&stable, &over, &spec, Stage::Overdue);
    assert!(
        matches!(verdict, Verdict::Fail(ref why) if why.contains("above max_error_rate 1%")),
        "{verdict:?}"
    );
    // A limit of 0 % takes no error at all.
    let none = CanarySpec {
        max_error_rate: Share::NONE,
        ..CanarySpec::default()
    };
    let verdict = judge(&stable, &erring(500, 1), &none, Stage::Pause);
    assert!(matches!(verdict, Verdict::Fail(_)), "{verdict:?}");
}

#[test]
fn too_little_traffic_waits_then_fails_at_the_deadline() {
    let spec = CanarySpec::default();
    let stable = steady(5_000, 1.0);
    let canary = steady(40, 1.0);
    let [pause, judged, overdue] = all_stages(&stable, &canary, &spec);
    assert!(
        matches!(pause, Verdict::Wait(ref m) if m.contains("40 of the 100")),
        "{pause:?}"
    );
    assert_eq!(pause, judged);
    assert_eq!(
        overdue,
        Verdict::Fail(
            "no verdict within progress_deadline 10m: 40 of the 100 requests needed to judge"
                .to_owned()
        )
    );
}

#[test]
fn a_burst_of_slow_requests_is_not_a_slow_p99() {
    // 20 of 300 canary requests caught in a stall of a busy host: its p99 is the stall, but
    // with fewer answers than a p99 needs, 10 slow ones are what is allowed, and 20 is chance.
    let spec = CanarySpec::default();
    let stable = steady(3_000, 2.0);
    let canary = window(300, 0, &[(2.0, 280), (40.0, 20)]);
    let verdict = judge(&stable, &canary, &spec, Stage::Pause);
    assert!(matches!(verdict, Verdict::Wait(_)), "{verdict:?}");
    // Once the canary has its 1,000 answers, 1 % is allowed, and 40 of them are clearly more.
    let canary = window(1_000, 0, &[(2.0, 960), (40.0, 40)]);
    let verdict = judge(&stable, &canary, &spec, Stage::Pause);
    assert!(
        matches!(verdict, Verdict::Fail(ref why) if why.ends_with("clearly more than 1% of them")),
        "{verdict:?}"
    );
}
