//! Benchmark: proxy overhead, direct vs cutover vs nginx against the same backend.
//!
//! `cargo bench --bench proxy` starts one backend (the release `cutover demo-app`), then measures
//! with `wrk -t2 -c50 -d10s --latency`:
//! - `direct`: the backend itself;
//! - `cutover`: cutover's proxy (in this process, started with `Proxy::bind` from a 2-thread
//!   tokio runtime as the supervisor does);
//! - `canary`: the same with a canary route active (10 % to a second backend entry on the same
//!   process; wrk keeps no cookies, so every answer also sets the sticky cookie);
//! - `cutover+log`: `cutover` with the app's access log on (a JSON line per request, appended to
//!   a file in the bench's temp dir); its target is at least 0.9x the requests/s of `cutover`;
//! - `nginx`: Debian's nginx doing the header work cutover does on every request
//!   (`X-Forwarded-For/-Proto/-Host`, the `Host` passed on, an `X-Request-Id` to the backend and
//!   back); 2 worker processes (the same two cores), upstream keepalive 64, HTTP/1.1 to the
//!   backend, access log off;
//! - `nginx-bare`: the same nginx adding no header at all, for reference.
//!
//! The machine is shared and noisy, so the contenders run in alternating rounds (`BENCH_ROUNDS`,
//! 3 by default; each round starts with the next contender so none always runs first), every run
//! is printed, and the verdict compares the medians: cutover (and cutover with the canary route)
//! meets the target when its requests/s are at least nginx's and its p99 at most nginx's, and
//! `cutover+log` when its requests/s are at least 0.9x `cutover`'s. `BENCH_SECS` changes the
//! duration of each run (10 s by default); `ACCESS_LOG=0` leaves `cutover+log` out. Everything
//! stays on 127.0.0.1.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;

use common::{demo_backend, env_number, has, median, wait_for, wrk, Figures, Nginx};
use cutover::protocol::app::Balance;
use cutover::supervisor::proxy::{Backend, CanaryRoute, Proxy, Route};

fn print_row(name: &str, f: &Figures) {
    println!(
        "{name:<11} {:>12.0} {:>10.2} {:>10.2}  {}",
        f.rate,
        f.p50_ms,
        f.p99_ms,
        if f.errors.is_empty() {
            "none"
        } else {
            &f.errors
        }
    );
}

fn main() {
    let secs: u64 = env_number("BENCH_SECS", 10).max(1);
    let rounds: usize = env_number("BENCH_ROUNDS", 3).max(1);
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("proxy bench: `wrk` is not installed (apt-get install wrk); skipping");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");

    let (backend_addr, _backend) = demo_backend("bench");

    // The supervisor's own runtime has one worker per core: two here.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let backend = |id: &str, version: &str| {
        Arc::new(Backend {
            id: id.into(),
            version: version.into(),
            addr: backend_addr,
        })
    };
    let access_log = env_number("ACCESS_LOG", 1) != 0;
    let access_log_path = dir.path().join("logs/bench/access.log");
    let (proxy, canary, logged) = runtime.block_on(async {
        let bind = || Proxy::bind("127.0.0.1:0".parse().unwrap());
        let proxy = bind().await.expect("bind cutover proxy");
        proxy.set_route(Route {
            backends: vec![backend("bench-0", "bench")],
            balance: Balance::RoundRobin,
            canary: None,
        });
        let canary = bind().await.expect("bind cutover proxy");
        canary.set_route(Route {
            backends: vec![backend("bench-0", "bench")],
            balance: Balance::RoundRobin,
            canary: Some(CanaryRoute {
                backends: vec![backend("bench-canary-0", "canary")],
                share: "10%".parse().expect("a share"),
                cookie: "cutover_canary".into(),
                header: "x-cutover-canary".into(),
            }),
        });
        let logged = bind().await.expect("bind cutover proxy");
        logged.set_route(Route {
            backends: vec![backend("bench-0", "bench")],
            balance: Balance::RoundRobin,
            canary: None,
        });
        logged
            .set_access_log("bench", Some(access_log_path.as_path()))
            .expect("open the access log");
        (proxy, canary, logged)
    });
    wait_for("cutover proxy", || {
        TcpStream::connect(proxy.local_addr).is_ok()
    });
    wait_for("cutover proxy with a canary route", || {
        TcpStream::connect(canary.local_addr).is_ok()
    });

    wait_for("cutover proxy with an access log", || {
        TcpStream::connect(logged.local_addr).is_ok()
    });

    let mut targets = vec![
        ("direct", backend_addr),
        ("cutover", proxy.local_addr),
        ("canary", canary.local_addr),
    ];
    if access_log {
        targets.push(("cutover+log", logged.local_addr));
    }
    let mut nginxes = Vec::new();
    if has("nginx", "-v") {
        for (name, headers) in [("nginx", true), ("nginx-bare", false)] {
            let nginx = Nginx::start(&dir.path().join(name), &[backend_addr.to_string()], headers);
            targets.push((name, nginx.listen));
            nginxes.push(nginx);
        }
    }
    // A short warm-up each, so connection pools and caches are filled before measuring.
    for (_, addr) in &targets {
        wrk(&format!("http://{addr}/"), 2);
    }
    println!(
        "proxy bench: wrk -t2 -c50 -d{secs}s --latency, {rounds} alternating round(s), \
         backend `cutover demo-app` (release)"
    );
    println!(
        "{:<11} {:>12} {:>10} {:>10}  errors",
        "target", "req/s", "p50 ms", "p99 ms"
    );
    let mut runs: Vec<Vec<Figures>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        println!("-- round {}", round + 1);
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            let (name, addr) = targets[i];
            let f = wrk(&format!("http://{addr}/"), secs);
            print_row(name, &f);
            runs[i].push(f);
        }
    }
    println!("-- median of {rounds}");
    let medians: Vec<Figures> = runs
        .iter()
        .map(|figures| Figures {
            rate: median(&mut figures.iter().map(|f| f.rate).collect::<Vec<_>>()),
            p50_ms: median(&mut figures.iter().map(|f| f.p50_ms).collect::<Vec<_>>()),
            p99_ms: median(&mut figures.iter().map(|f| f.p99_ms).collect::<Vec<_>>()),
            errors: figures
                .iter()
                .map(|f| f.errors.as_str())
                .filter(|e| !e.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        })
        .collect();
    for ((name, _), f) in targets.iter().zip(&medians) {
        print_row(name, f);
    }
    let figures = |name: &str| {
        targets
            .iter()
            .position(|(n, _)| *n == name)
            .map(|i| &medians[i])
    };
    let mut all_met = true;
    if let Some(logged) = figures("cutover+log") {
        let ours = figures("cutover").expect("cutover always runs");
        let rps_ratio = logged.rate / ours.rate;
        let met = rps_ratio >= 0.9;
        all_met &= met;
        let lines = std::fs::read(&access_log_path)
            .map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count())
            .unwrap_or(0);
        println!(
            "cutover+log/cutover: req/s {rps_ratio:.2}x, p99 {:.2}x (target req/s >= 0.9x: {}); \
             {lines} access-log lines written",
            logged.p99_ms / ours.p99_ms,
            if met { "met" } else { "NOT MET" }
        );
    }
    let Some(nginx) = figures("nginx") else {
        println!("nginx: not installed (apt-get install nginx-light), no comparison");
        return;
    };
    for name in ["cutover", "canary"] {
        let ours = figures(name).expect("cutover always runs");
        let rps_ratio = ours.rate / nginx.rate;
        let p99_ratio = ours.p99_ms / nginx.p99_ms;
        let met = rps_ratio >= 1.0 && p99_ratio <= 1.0;
        all_met &= met;
        println!("{name}/nginx: req/s {rps_ratio:.2}x, p99 {p99_ratio:.2}x");
    }
    if let Some(bare) = figures("nginx-bare") {
        let ours = figures("cutover").expect("cutover always runs");
        println!(
            "cutover/nginx-bare (for reference, nginx adding no header): req/s {:.2}x, p99 {:.2}x",
            ours.rate / bare.rate,
            ours.p99_ms / bare.p99_ms
        );
    }
    println!(
        "verdict: target (req/s >= nginx's, p99 <= nginx's, with and without a canary route; \
         with the access log >= 0.9x without) {}",
        if all_met { "MET" } else { "NOT MET" }
    );
    drop((proxy, canary, logged, nginxes));
}
