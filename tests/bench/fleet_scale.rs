//! Benchmark: a simulated fleet on one host. For each N in `FLEET_SIZES` (default 10,25,50) it
//! starts N nodes on 127.0.0.1, each a real Serf agent running `cutover serf-handler` beside a
//! supervisor of its own (the demo app as the app), and measures:
//! - a rollout's time with `--max-parallel 1` and `5`, and its coordination overhead per batch:
//!   the rollout's time per batch minus the app's own start + health time for such a batch (the
//!   same deploy done directly with `cutover apply`, on one node or on five at once; as
//!   `tests/bench/fleet.rs` defines it), target ≤ 1 s;
//! - `cutover status --fleet`, the whole command (target ≤ 2 s at 50 nodes);
//! - catch-up: a node killed before a rollout runs the fleet's version this long after it is
//!   back (target ≤ 10 s);
//! - an idle node's memory: the RSS of its Serf agent plus its supervisor, from /proc;
//! - Serf's own default query timeout and how long a tag change takes to reach every member.
//!
//! Then how each figure grows with N (the least-squares slope per node) and its projection to
//! 1,000 nodes, beside Serf's limits as the `serf` on this machine shows them.
//!
//! Run: `cargo bench --bench fleet_scale` (`FLEET_SIZES=3,5` for a quick look, `BENCH_LOGS=1`
//! to print each rollout's progress). Every fleet is stopped when its size is done, also after
//! a panic, and the bench then checks that nothing it started still runs.

#[path = "../it/support/mod.rs"]
mod support;

#[path = "fleet_scale/growth.rs"]
mod growth;
#[path = "fleet_scale/serf_limits.rs"]
mod serf_limits;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::fleet::{release, text, Behaviour, Fleet};
use support::procs;
use support::serf::SerfAgent;
use support::wait_until;

/// The fleet size each figure is projected to.
const PROJECTED: f64 = 1000.0;

/// Processes a fleet left running after it was stopped (counted by `Run`'s drop).
static STRAYS: AtomicUsize = AtomicUsize::new(0);

fn main() {
    let sizes = sizes();
    let open_files = raise_open_files();
    let processes = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC)
        .map_or(0, |(soft, _)| soft);
    println!(
        "fleet_scale: N = {sizes:?}; limits: {open_files} open files per process (soft, raised \
         to the hard limit), {processes} processes per user"
    );
    let scratch = tempfile::tempdir().expect("a temp dir for the Serf probe");
    let limits = serf_limits::probe(scratch.path());
    let mut all = Vec::new();
    for &n in &sizes {
        let figures = measure(n);
        figures.print();
        all.push(figures);
    }
    report(&all, &limits);
    let strays = STRAYS.load(Ordering::SeqCst);
    assert_eq!(
        strays, 0,
        "{strays} process(es) of the fleets outlived them"
    );
    println!("fleet_scale: nothing the fleets started still runs");
}

/// `FLEET_SIZES`, e.g. `10,25,50`.
fn sizes() -> Vec<usize> {
    let text = std::env::var("FLEET_SIZES").unwrap_or_else(|_| "10,25,50".to_owned());
    let sizes: Option<Vec<usize>> = text
        .split(',')
        .map(|s| s.trim().parse().ok().filter(|&n| n >= 2))
        .collect();
    sizes.unwrap_or_else(|| {
        panic!(
            "FLEET_SIZES={text:?}: give node counts of at least 2, comma-separated (e.g. 10,25,50)"
        )
    })
}

/// Raises this process's soft limit on open files to the hard one (the nodes inherit it: 50
/// supervisors and agents with their sockets, logs and pipes); returns the new soft limit.
fn raise_open_files() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("read RLIMIT_NOFILE");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise RLIMIT_NOFILE");
    }
    hard.max(soft)
}

/// What one fleet size measured.
struct Figures {
    n: usize,
    /// Starting the N nodes until all are alive in Serf.
    start: Duration,
    /// The app's own start + health time: `cutover apply` on one node, and on five at once
    /// (medians of 3).
    own_one: Duration,
    own_five: Duration,
    rollout_one: Rollout,
    rollout_five: Rollout,
    /// `cutover status --fleet`: median and slowest of 5, and the fewest nodes one run heard.
    status: Duration,
    status_max: Duration,
    status_heard: usize,
    catch_up: Duration,
    /// Idle node, KiB: medians over the nodes of the Serf agent, the supervisor, their sum; and
    /// the largest sum.
    serf_kib: u64,
    supervisor_kib: u64,
    node_kib: u64,
    node_kib_max: u64,
    /// Everything the idle fleet runs (agents, supervisors, instances).
    processes: usize,
    threads: u64,
    fds: usize,
    fds_max: usize,
    /// Serf's default query timeout at this size, and a tag change until every member saw it
    /// (with the period of one sweep of the observers).
    query_timeout: Duration,
    spread: Duration,
    sweep: Duration,
}

/// One timed rollout.
struct Rollout {
    took: Duration,
    /// Its staging phase (every node fetches and unpacks before the first switch), by the
    /// rollout's own clock; `None` for a rollout without one.
    staging: Option<Duration>,
}

impl Rollout {
    /// The switch phase: the rollout after its staging phase.
    fn switching(&self) -> Duration {
        self.took.saturating_sub(self.staging.unwrap_or_default())
    }

    /// Coordination overhead per batch: the time per batch beyond the app's own start +
    /// health time `own`.
    fn overhead(&self, batches: usize, own: Duration) -> Overhead {
        let per = |took: Duration| (took / batches as u32).saturating_sub(own);
        Overhead {
            switches: per(self.switching()),
            with_staging: per(self.took),
        }
    }
}

/// A rollout's coordination overhead per batch, for the switches (what the target is about:
/// staged, a batch's switch costs only start + health) and with the staging phase spread over
/// the batches (the whole rollout, as `tests/bench/fleet.rs` counted it before staging).
struct Overhead {
    switches: Duration,
    with_staging: Duration,
}

impl Figures {
    fn batches(&self, parallel: usize) -> usize {
        self.n.div_ceil(parallel)
    }

    fn overhead_one(&self) -> Overhead {
        self.rollout_one.overhead(self.batches(1), self.own_one)
    }

    fn overhead_five(&self) -> Overhead {
        self.rollout_five.overhead(self.batches(5), self.own_five)
    }

    fn print(&self) {
        let n = self.n;
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "fleet_scale: N={n}: started and joined in {:.1?}",
            self.start
        );
        println!(
            "fleet_scale: N={n}: the app's own deploy (direct `cutover apply`, median of 3): \
             {:.2?} on one node, {:.2?} on five at once",
            self.own_one, self.own_five
        );
        for (parallel, rollout, own, overhead) in [
            (1, &self.rollout_one, self.own_one, self.overhead_one()),
            (5, &self.rollout_five, self.own_five, self.overhead_five()),
        ] {
            let batches = self.batches(parallel);
            let staging = rollout.staging.unwrap_or_default();
            println!(
                "fleet_scale: N={n}: rollout --max-parallel {parallel}: {:.2?} in all, staging \
                 {staging:.2?}, then {batches} batches of {:.2?}: {:.2?} beyond the app's own \
                 {own:.2?} (target <= 1s): {}; {:.2?} with the staging spread over the batches",
                rollout.took,
                rollout.switching() / batches as u32,
                overhead.switches,
                verdict(overhead.switches <= Duration::from_secs(1)),
                overhead.with_staging,
            );
        }
        println!(
            "fleet_scale: N={n}: status --fleet: {:.2?} median of 5, slowest {:.2?}, every run \
             heard at least {}/{n} nodes (target <= 2s at 50): {}",
            self.status,
            self.status_max,
            self.status_heard,
            verdict(self.status <= Duration::from_secs(2) && self.status_heard == n)
        );
        println!(
            "fleet_scale: N={n}: a node killed before a rollout runs the fleet's version \
             {:.2?} after it is back (target <= 10s): {}",
            self.catch_up,
            verdict(self.catch_up <= Duration::from_secs(10))
        );
        println!(
            "fleet_scale: N={n}: idle node RSS {:.1} MiB (Serf agent {:.1} + supervisor {:.1}; \
             median of the nodes), largest {:.1} MiB",
            mib(self.node_kib),
            mib(self.serf_kib),
            mib(self.supervisor_kib),
            mib(self.node_kib_max)
        );
        println!(
            "fleet_scale: N={n}: the idle fleet runs {} processes, {} threads, {} open files \
             (at most {} in one process)",
            self.processes, self.threads, self.fds, self.fds_max
        );
        println!(
            "fleet_scale: N={n}: Serf's default query timeout {:.2?}; a tag change reached every \
             member in {:.2?} (one sweep of the observers: {:.2?})",
            self.query_timeout, self.spread, self.sweep
        );
    }
}

/// One fleet, stopped on drop (also when a measurement panics), and then checked for
/// processes it left behind.
struct Run {
    fleet: Option<Fleet>,
    root: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        // Each node stops its apps, then SIGKILLs its supervisor and agent and reaps them.
        drop(self.fleet.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut left = procs::mentioning(&self.root);
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            left = procs::mentioning(&self.root);
        }
        if !left.is_empty() {
            eprintln!("fleet_scale: still running after the fleet stopped (killed now): {left:?}");
            STRAYS.fetch_add(left.len(), Ordering::SeqCst);
            for (pid, _) in left {
                procs::kill_9(pid);
            }
        }
    }
}

fn measure(n: usize) -> Figures {
    let started = Instant::now();
    let fleet = Fleet::start(n, true, |_| Vec::new());
    let start = started.elapsed();
    let mut run = Run {
        root: fleet.root.path().to_owned(),
        fleet: Some(fleet),
    };
    let fleet = run.fleet.as_mut().expect("the fleet runs");
    let dir = run.root.clone();
    let v1 = release(&dir, "shop", "1", Behaviour::Serves);
    let ten = n.min(10).to_string();
    let out = fleet.rollout("n1", &[v1.to_str().unwrap(), "--max-parallel", &ten]);
    fleet.assert_rolled_out(&out);

    // Idle: every node serves shop 1 and nothing is being deployed.
    let (status, status_max, status_heard) = status_latency(fleet, n);
    let idle = idle_memory(fleet);
    let load = load(&run.root);
    let query_timeout = serf_limits::default_timeout(fleet.node("n1").agent());
    let agents: Vec<&SerfAgent> = fleet.nodes.iter().map(|node| node.agent()).collect();
    let last = format!("n{n}");
    let (spread, sweep) = serf_limits::tag_spread(fleet.node(&last).agent(), &agents, "1");

    let own_one = own_deploy(fleet, &dir, 1);
    let own_five = own_deploy(fleet, &dir, n.min(5));
    let rollout_one = timed_rollout(fleet, &dir, "2", 1);
    let rollout_five = timed_rollout(fleet, &dir, "3", 5);
    let catch_up = catch_up(fleet, &dir, n);
    Figures {
        n,
        start,
        own_one,
        own_five,
        rollout_one,
        rollout_five,
        status,
        status_max,
        status_heard,
        catch_up,
        serf_kib: idle.0,
        supervisor_kib: idle.1,
        node_kib: idle.2,
        node_kib_max: idle.3,
        processes: load.0,
        threads: load.1,
        fds: load.2,
        fds_max: load.3,
        query_timeout,
        spread,
        sweep,
    }
}

/// `cutover status --fleet --json` five times: the median and slowest time, and the fewest
/// nodes whose own answer (not only their tags) one run showed.
fn status_latency(fleet: &Fleet, n: usize) -> (Duration, Duration, usize) {
    let mut times = Vec::new();
    let mut heard = n;
    for _ in 0..5 {
        let started = Instant::now();
        let out = fleet.status("n1", &["--json"]);
        times.push(started.elapsed());
        assert!(out.status.success(), "status --fleet: {}", text(&out));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        let answered = rows
            .as_array()
            .expect("status --fleet --json prints an array")
            .iter()
            .filter(|row| row["health"] != "?" && row["phase"] != "no answer")
            .count();
        heard = heard.min(answered);
    }
    times.sort();
    (times[2], times[4], heard)
}

/// Medians over the nodes of the RSS (KiB) of the Serf agent, the supervisor and both; and the
/// largest sum.
fn idle_memory(fleet: &Fleet) -> (u64, u64, u64, u64) {
    let (mut serf, mut supervisor, mut node) = (Vec::new(), Vec::new(), Vec::new());
    for each in &fleet.nodes {
        let agent = procs::rss_kib(each.agent().pid().expect("the agent runs"));
        let pid = each.supervisor.as_ref().and_then(|s| s.running_pid());
        let own = procs::rss_kib(pid.expect("the supervisor runs"));
        serf.push(agent);
        supervisor.push(own);
        node.push(agent + own);
    }
    let max = node.iter().copied().max().unwrap_or(0);
    (median(serf), median(supervisor), median(node), max)
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// Processes, threads and open files (all, and the most in one process) of what runs under
/// `root`.
fn load(root: &Path) -> (usize, u64, usize, usize) {
    let running = procs::mentioning(root);
    let fds: Vec<usize> = running
        .iter()
        .map(|(pid, _)| procs::open_fds(*pid))
        .collect();
    let threads = running.iter().map(|(pid, _)| procs::threads(*pid)).sum();
    let max = fds.iter().copied().max().unwrap_or(0);
    (running.len(), threads, fds.iter().sum(), max)
}

/// The app's own start + health time for a batch of `width` nodes: shop deployed directly with
/// `cutover apply` on nodes n1…n`width` at once, until the last one is done; median of 3.
fn own_deploy(fleet: &Fleet, dir: &Path, width: usize) -> Duration {
    let mut times = Vec::new();
    for round in 1..=3 {
        let manifest = release(
            dir,
            "shop",
            &format!("own{width}-{round}"),
            Behaviour::Serves,
        );
        let started = Instant::now();
        std::thread::scope(|scope| {
            for node in &fleet.nodes[..width] {
                let manifest = &manifest;
                scope.spawn(move || {
                    let out = node.apply(manifest);
                    assert!(out.status.success(), "{}: {}", node.name, text(&out));
                });
            }
        });
        times.push(started.elapsed());
    }
    times.sort();
    times[1]
}

/// Rolls shop `version` out to the whole fleet through n1, `parallel` nodes at a time.
fn timed_rollout(fleet: &Fleet, dir: &Path, version: &str, parallel: usize) -> Rollout {
    let manifest = release(dir, "shop", version, Behaviour::Serves);
    let started = Instant::now();
    let out = fleet.rollout(
        "n1",
        &[
            manifest.to_str().unwrap(),
            "--max-parallel",
            &parallel.to_string(),
        ],
    );
    let took = started.elapsed();
    fleet.assert_rolled_out(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if std::env::var_os("BENCH_LOGS").is_some() {
        print!("{stdout}");
    }
    Rollout {
        took,
        staging: staging_ended(&stdout),
    }
}

/// When the staging phase ended by the rollout's own clock, from its progress line
/// `[   1.2s] staged shop 2 on 5 of 5 node(s)`.
fn staging_ended(stdout: &str) -> Option<Duration> {
    let line = stdout
        .lines()
        .find(|l| l.contains("] staged ") && l.ends_with(" node(s)"))?;
    let (clock, _) = line.strip_prefix('[')?.split_once("s]")?;
    clock.trim().parse().ok().map(Duration::from_secs_f64)
}

/// Kills the last node, rolls shop 4 out without it, brings it back and times how long it
/// takes to run shop 4 on its own (catch-up on join).
fn catch_up(fleet: &mut Fleet, dir: &Path, n: usize) -> Duration {
    let last = format!("n{n}");
    let join = fleet.node("n1").agent().bind.clone();
    fleet.node_mut(&last).kill();
    fleet.wait_alive(n - 1);
    let v4 = release(dir, "shop", "4", Behaviour::Serves);
    let out = fleet.rollout("n1", &[v4.to_str().unwrap(), "--max-parallel", "5"]);
    // 3: done, except for a node that could not be reached (the one killed).
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let back = Instant::now();
    fleet.node_mut(&last).rejoin(join);
    let node = fleet.node(&last);
    wait_until(
        &format!("{last}, back, to run shop 4"),
        Duration::from_secs(120),
        || node.live_version("shop").as_deref() == Some("4"),
    );
    back.elapsed()
}

/// One figure of every size, how it grows and where it would be at `PROJECTED` nodes.
struct Growth {
    what: &'static str,
    unit: &'static str,
    value: fn(&Figures) -> f64,
    target: &'static str,
    model: Model,
}

/// How a figure is projected.
#[derive(PartialEq)]
enum Model {
    /// A least-squares line in N.
    Line,
    /// Serf's own rule for a query's default timeout: a fixed time per step of
    /// ceil(log10(N+1)).
    SerfSteps,
}

/// Serf's ceil(log10(N+1)): 1 up to 9 nodes, 2 up to 99, 3 up to 999, 4 at 1,000.
fn serf_steps(n: f64) -> f64 {
    (n + 1.0).log10().ceil()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

const GROWTH: &[Growth] = &[
    Growth {
        what: "rollout, --max-parallel 1",
        unit: "s",
        value: |f| secs(f.rollout_one.took),
        target: "",
        model: Model::Line,
    },
    Growth {
        what: "  of which staging",
        unit: "s",
        value: |f| secs(f.rollout_one.staging.unwrap_or_default()),
        target: "",
        model: Model::Line,
    },
    Growth {
        what: "rollout, --max-parallel 5",
        unit: "s",
        value: |f| secs(f.rollout_five.took),
        target: "",
        model: Model::Line,
    },
    Growth {
        what: "overhead per batch, --max-parallel 1",
        unit: "s",
        value: |f| secs(f.overhead_one().switches),
        target: "<= 1 s",
        model: Model::Line,
    },
    Growth {
        what: "  with the staging spread over the batches",
        unit: "s",
        value: |f| secs(f.overhead_one().with_staging),
        target: "",
        model: Model::Line,
    },
    Growth {
        what: "overhead per batch, --max-parallel 5",
        unit: "s",
        value: |f| secs(f.overhead_five().switches),
        target: "<= 1 s",
        model: Model::Line,
    },
    Growth {
        what: "  with the staging spread over the batches",
        unit: "s",
        value: |f| secs(f.overhead_five().with_staging),
        target: "",
        model: Model::Line,
    },
    Growth {
        what: "status --fleet",
        unit: "s",
        value: |f| secs(f.status),
        target: "<= 2 s at 50",
        model: Model::Line,
    },
    Growth {
        what: "catch-up after rejoin",
        unit: "s",
        value: |f| secs(f.catch_up),
        target: "<= 10 s",
        model: Model::Line,
    },
    Growth {
        what: "idle node RSS (Serf agent + supervisor)",
        unit: "MiB",
        value: |f| f.node_kib as f64 / 1024.0,
        target: "",
        model: Model::Line,
    },
    Growth {
        what: "  of which the Serf agent",
        unit: "MiB",
        value: |f| f.serf_kib as f64 / 1024.0,
        target: "",
        model: Model::Line,
    },
    Growth {
        what: "Serf's default query timeout",
        unit: "s",
        value: |f| secs(f.query_timeout),
        target: "",
        model: Model::SerfSteps,
    },
    Growth {
        what: "a tag change seen by every member",
        unit: "s",
        value: |f| secs(f.spread),
        target: "",
        model: Model::Line,
    },
];

fn report(all: &[Figures], limits: &serf_limits::Limits) {
    println!();
    println!(
        "| N | rollout -p1 (staging) | rollout -p5 (staging) | own deploy 1 / 5 | \
         overhead/batch -p1 (with staging) | -p5 (with staging) | status --fleet | \
         catch-up | idle node RSS |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rollout = |r: &Rollout| match r.staging {
        Some(staging) => format!("{:.1} s ({:.1})", secs(r.took), secs(staging)),
        None => format!("{:.1} s", secs(r.took)),
    };
    let overhead = |o: Overhead| format!("{:.2} s ({:.2})", secs(o.switches), secs(o.with_staging));
    for f in all {
        println!(
            "| {} | {} | {} | {:.2} / {:.2} s | {} | {} | {:.2} s | {:.2} s | {:.1} MiB |",
            f.n,
            rollout(&f.rollout_one),
            rollout(&f.rollout_five),
            secs(f.own_one),
            secs(f.own_five),
            overhead(f.overhead_one()),
            overhead(f.overhead_five()),
            secs(f.status),
            secs(f.catch_up),
            f.node_kib as f64 / 1024.0
        );
    }
    println!();
    let sizes: Vec<String> = all.iter().map(|f| f.n.to_string()).collect();
    println!(
        "How each figure grows: the least-squares line through N = {}, its slope per node and \
         its value at {PROJECTED} nodes",
        sizes.join(", ")
    );
    println!("| figure | slope per node | at {PROJECTED} nodes | target |");
    println!("|---|---:|---:|---|");
    for growth in GROWTH {
        let points: Vec<(f64, f64)> = all
            .iter()
            .map(|f| (f.n as f64, (growth.value)(f)))
            .collect();
        let per_step = points.iter().map(|(n, v)| v / serf_steps(*n));
        let per_step = per_step.sum::<f64>() / points.len() as f64;
        let (slope, projected) = match growth::fit(&points) {
            _ if growth.model == Model::SerfSteps => (
                format!("{per_step:.2} {} x ceil(log10(N+1))", growth.unit),
                format!("{:.2} {}", per_step * serf_steps(PROJECTED), growth.unit),
            ),
            Some(line) => (
                format!("{:+.4} {}", line.slope, growth.unit),
                format!("{:.2} {}", line.at(PROJECTED), growth.unit),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "| {} | {slope} | {projected} | {} |",
            growth.what, growth.target
        );
    }
    println!();
    let run_id = " run=0123456789abcdef".len();
    println!(
        "Serf's own limits, from the `serf` on this machine ({}):",
        limits.version
    );
    println!(
        "- a query's payload: at most {} bytes (Serf's 1 KiB QuerySizeLimit on the whole encoded \
         query); cutover's deploy payload is the manifest URL and ` run=ID` ({run_id} bytes), so \
         URLs up to {} bytes; each answer: at most 1 KiB (QueryResponseSizeLimit), which \
         cutover's answers are kept under",
        limits.max_payload,
        limits.max_payload.saturating_sub(run_id)
    );
    println!(
        "- node names count against the same 1 KiB: one query can name at most {} nodes called \
         like `n123`, {} called like `web-0001.dc1.example.com`; `status --fleet`, a rollout's \
         plan and a rejoining node's catch-up each name every alive node in one status query",
        limits.max_short_names, limits.max_host_names
    );
    println!(
        "- a query's default timeout is GossipInterval x QueryTimeoutMult (16) x \
         ceil(log10(N+1)): {:.2?} measured on a cluster of one with -profile=local (100 ms \
         gossip), so 4 x that at 1,000 nodes, and twice as much with the default lan profile \
         (200 ms); cutover sets its own (--query-timeout, 3 s)",
        limits.default_timeout_alone
    );
    println!(
        "- gossip: each message goes to 3 random members every GossipInterval and is retransmitted \
         RetransmitMult x ceil(log10(N+1)) times, so it reaches every member in O(log N) intervals"
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}
