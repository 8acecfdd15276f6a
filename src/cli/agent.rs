//! The agent's flags in both stretcher generations (`-timeout 10` and `--timeout=10s`), and the
//! agent run with its exit code (always 0 under `consul watch`).

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use rand::Rng;

use super::logging::LogFormat;
use super::values::{parse_bandwidth, parse_duration, parse_header, parse_size};
use super::GlobalArgs;
use crate::agent::durable::Durability;
use crate::agent::input::{self, Event, Input};
use crate::agent::limits::{self, Limits};
use crate::agent::log::{Echo, RunLog, DEFAULT_CAP};
use crate::agent::source::{FetchOptions, TokenFor};
use crate::agent::trust::EXIT_UNTRUSTED;
use crate::agent::{last_deploy, Mode, Options, Outcome};

/// Flags of every deploy run, from stdin (`cutover`) or not (`cutover apply`).
#[derive(Debug, Clone, Args)]
pub struct DeployFlags {
    /// Write the outcome, time and duration of the last deploy of each app and dest to this
    /// node_exporter textfile-collector file [default: STATE_DIR/metrics/agent.prom]
    #[arg(long, env = "CUTOVER_METRICS_TEXTFILE", value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,
    /// Bytes per second for the src download: plain bytes, or 1K/1M/1G (powers of 1000),
    /// 1KiB/1MiB/1GiB (powers of 1024) [v1: -max-bandwidth, v2: --max-band-width]
    #[arg(long = "max-bandwidth", visible_alias = "max-band-width", value_name = "RATE", value_parser = parse_bandwidth)]
    pub max_bandwidth: Option<u64>,
    /// Limit for the whole fetch of the manifest and of src, retries included: seconds (`10`,
    /// `1.5`) or a duration (`10s`, `2m`)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Extra attempts to fetch the manifest and src after a failure
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retry: u32,
    /// Pause between attempts: seconds or a duration
    #[arg(long, value_name = "DURATION", default_value = "3", value_parser = parse_duration)]
    pub retry_wait: Duration,
    /// rsync's verbosity option, passed as is (`-v`, `-vv`; empty for none)
    #[arg(long, value_name = "OPTION", num_args = 0..=1, default_value = "-v", default_missing_value = "-v")]
    pub rsync_verbose: String,
    /// Extra HTTP request header for the manifest and src fetch (repeatable)
    #[arg(long = "http-header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub http_headers: Vec<(String, String)>,
    /// How long to wait for another cutover deploying to the same dest
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// The most src may download, in the units of --max-bandwidth (0: no limit)
    #[arg(long, env = "CUTOVER_MAX_SRC_SIZE", value_name = "SIZE", default_value = "16GiB", value_parser = parse_size)]
    pub max_src_size: u64,
    /// The most the archive's files may hold once unpacked (0: no limit)
    #[arg(long, env = "CUTOVER_MAX_UNPACKED_SIZE", value_name = "SIZE", default_value = "16GiB", value_parser = parse_size)]
    pub max_unpacked_size: u64,
    /// The most files, directories and links the archive may create (0: no limit)
    #[arg(long, env = "CUTOVER_MAX_ENTRIES", value_name = "N", default_value_t = limits::DEFAULT_MAX_ENTRIES)]
    pub max_entries: u64,
    /// Space that must stay free on dest's filesystem while the archive unpacks
    #[arg(long, env = "CUTOVER_MIN_FREE_SPACE", value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub min_free_space: u64,
    /// Inodes that must stay free on dest's filesystem while the archive unpacks
    #[arg(long, env = "CUTOVER_MIN_FREE_INODES", value_name = "N", default_value_t = limits::DEFAULT_MIN_FREE_INODES)]
    pub min_free_inodes: u64,
    /// Hidden, for the fetch bench only: skip flushing the release to disk before it goes live,
    /// so the bench can show what the flush costs. A power cut may then leave empty files.
    #[arg(long, hide = true)]
    pub unsafe_no_fsync: bool,
}

impl DeployFlags {
    /// The limits these flags set; a maximum of 0 is no limit.
    pub fn limits(&self) -> Limits {
        let max = |value: u64| if value == 0 { u64::MAX } else { value };
        Limits {
            max_src_size: max(self.max_src_size),
            max_unpacked_size: max(self.max_unpacked_size),
            max_entries: max(self.max_entries),
            min_free_space: self.min_free_space,
            min_free_inodes: self.min_free_inodes,
        }
    }
}

/// The agent's own flags: what stretcher's command line takes.
#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub deploy: DeployFlags,
    /// Sleep a random time in [0, DURATION) before reading stdin, to spread a fleet's downloads
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub random_delay: Option<Duration>,
    /// Deploy a Consul/Serf event even when it was already handled (a restarted watch replays
    /// every buffered event; by default those are skipped)
    #[arg(long, visible_alias = "no-replay-protection")]
    pub allow_replays: bool,
    /// Print the version and exit [v1: -v, -version]
    #[arg(short = 'v', long)]
    pub version: bool,
}

/// Long flags stretcher v1 spells with one dash (Go's flag package); `-v` stays short.
const LONG_FLAGS: &[&str] = &[
    "max-bandwidth",
    "max-band-width",
    "timeout",
    "retry",
    "retry-wait",
    "random-delay",
    "rsync-verbose",
    "version",
    "http-header",
    "lock-timeout",
    "max-src-size",
    "max-unpacked-size",
    "max-entries",
    "min-free-space",
    "min-free-inodes",
    "allow-replays",
    "no-replay-protection",
    "state-dir",
    "socket",
    "trust",
];

/// Rewrites stretcher v1 single-dash long flags to the double-dash spelling clap understands.
///
/// `-rsync-verbose` always takes a value in v1 (`-rsync-verbose -v`); that value looks like a
/// flag, so it is glued on as `--rsync-verbose=-v` before clap sees it.
pub fn normalize_args(argv: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(argv.len());
    let mut args = argv.into_iter();
    out.extend(args.next());
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            out.extend(args.by_ref());
            break;
        }
        let long = match text.strip_prefix('-') {
            Some(rest) if !rest.starts_with('-') => {
                let name = rest.split('=').next().unwrap_or(rest);
                if LONG_FLAGS.contains(&name) {
                    format!("-{text}")
                } else {
                    text.to_owned()
                }
            }
            _ => text.to_owned(),
        };
        if long == "--rsync-verbose" {
            let mut rest = args.as_slice().iter();
            if let Some(value) = rest
                .next()
                .and_then(|v| v.to_str())
                .filter(|v| is_verbosity(v))
            {
                out.push(OsString::from(format!("--rsync-verbose={value}")));
                args.next();
                continue;
            }
        }
        out.push(OsString::from(long));
    }
    out
}

fn is_verbosity(value: &str) -> bool {
    value.is_empty()
        || matches!(value, "--verbose" | "--quiet" | "-q")
        || (value.len() > 1 && value.starts_with('-') && value[1..].bytes().all(|b| b == b'v'))
}

/// `cutover [flags]`: reads the event on stdin and deploys it.
pub fn run(args: AgentArgs, global: &GlobalArgs) -> ExitCode {
    if args.version {
        println!("cutover {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let log = run_log(global);
    if let Some(delay) = args.random_delay.filter(|d| !d.is_zero()) {
        let pause = rand::thread_rng().gen_range(Duration::ZERO..delay);
        log.line(format!("random delay: sleeping {pause:.1?}"));
        std::thread::sleep(pause);
    }
    let parsed = input::read_bounded(std::io::stdin().lock())
        .and_then(|bytes| input::parse(&bytes, &input::Env::from_process()));
    let outcome = match parsed {
        Ok(Input::Deploy(event)) => execute(
            &event,
            &args.deploy,
            !args.allow_replays,
            Mode::Deploy,
            global,
            &log,
        ),
        Ok(Input::NotUserEvent(kind)) => {
            log.line(format!(
                "ignoring serf {kind} event: cutover deploys on user events (serf agent -event-handler user:deploy=cutover)"
            ));
            Outcome::Skipped
        }
        Err(err) => {
            // Input errors run no hooks: there is no manifest yet.
            log.error(err);
            Outcome::Failed
        }
    };
    exit_code(outcome)
}

/// The log of one run, its lines on stderr in the `--log-format` asked for.
pub(super) fn run_log(global: &GlobalArgs) -> RunLog {
    let echo = match global.log_format {
        LogFormat::Text => Echo::Text,
        LogFormat::Json => Echo::Events,
    };
    RunLog::new(DEFAULT_CAP, echo)
}

/// One deploy with the given flags, on a runtime of its own; shared with `cutover apply`.
pub(super) fn execute(
    event: &Event,
    flags: &DeployFlags,
    replay_protection: bool,
    mode: Mode,
    global: &GlobalArgs,
    log: &RunLog,
) -> Outcome {
    let start_dir = match std::env::current_dir() {
        Ok(dir) => dir,
        Err(err) => {
            log.error(format!(
                "could not read the current directory ({err}): start cutover from a directory that exists"
            ));
            return Outcome::Failed;
        }
    };
    let trust = match global.trust() {
        Ok(trust) => trust,
        Err(err) => {
            // Fail closed: a trust file that cannot be read must not mean "deploy anything".
            log.error(format!("Deploy manifest failed: {}: {err}", event.url));
            return Outcome::Refused;
        }
    };
    let opts = Options {
        fetch: FetchOptions {
            timeout: flags.timeout.filter(|t| !t.is_zero()),
            retries: flags.retry,
            retry_wait: flags.retry_wait,
            max_bandwidth: flags.max_bandwidth.filter(|b| *b > 0),
            headers: flags.http_headers.clone(),
            token_for: token_for_from_env(),
            // A progress bar is for a person at a terminal, and no JSON line.
            progress: std::io::stderr().is_terminal() && global.log_format == LogFormat::Text,
            // The AWS default chain (environment, profile, instance metadata), as stretcher.
            s3: None,
        },
        limits: flags.limits(),
        rsync_verbose: Some(flags.rsync_verbose.clone()).filter(|v| !v.is_empty()),
        lock_timeout: flags.lock_timeout,
        state_dir: global.state_dir(),
        socket: global.socket(),
        start_dir,
        replay_protection,
        trust,
        mode,
        durability: if flags.unsafe_no_fsync {
            Durability::Unsynced
        } else {
            Durability::Synced
        },
        metrics_textfile: flags
            .metrics_textfile
            .clone()
            .unwrap_or_else(|| last_deploy::default_textfile(&global.state_dir())),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            log.error(format!("could not start the async runtime: {err}"));
            return Outcome::Failed;
        }
    };
    runtime.block_on(crate::agent::run(event, &opts, log))
}

/// 0 on success or skip, 1 on failure, 8 for a manifest that is not trusted — but always 0 under
/// `consul watch`, where a non-zero exit stops the whole watch.
pub(super) fn exit_code(outcome: Outcome) -> ExitCode {
    let under_consul = std::env::var_os("CONSUL_INDEX").is_some();
    match outcome {
        _ if under_consul => ExitCode::SUCCESS,
        Outcome::Failed => ExitCode::FAILURE,
        Outcome::Refused => ExitCode::from(EXIT_UNTRUSTED),
        Outcome::Succeeded | Outcome::Skipped => ExitCode::SUCCESS,
    }
}

/// The token `cutover watch` hands its `cutover apply` for the watched repository's release
/// assets (`CUTOVER_GITHUB_TOKEN`, `CUTOVER_GITHUB_ASSETS`), read from the environment so that
/// it never shows in a process listing.
fn token_for_from_env() -> Option<TokenFor> {
    let token = std::env::var("CUTOVER_GITHUB_TOKEN").ok()?;
    let url_prefix = std::env::var("CUTOVER_GITHUB_ASSETS").ok()?;
    let usable = !token.trim().is_empty() && !url_prefix.trim().is_empty();
    usable.then(|| TokenFor {
        url_prefix: url_prefix.trim().to_owned(),
        token: token.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        let argv = std::iter::once("cutover").chain(args.iter().copied());
        normalize_args(argv.map(OsString::from).collect())
            .into_iter()
            .skip(1)
            .map(|a| a.into_string().expect("utf-8"))
            .collect()
    }

    #[test]
    fn v1_flags_become_double_dash() {
        assert_eq!(
            norm(&[
                "-max-bandwidth",
                "1M",
                "-timeout=10",
                "-retry-wait",
                "3",
                "-v"
            ]),
            [
                "--max-bandwidth",
                "1M",
                "--timeout=10",
                "--retry-wait",
                "3",
                "-v"
            ]
        );
        assert_eq!(norm(&["-version"]), ["--version"]);
        assert_eq!(norm(&["-x", "--", "-timeout"]), ["-x", "--", "-timeout"]);
    }

    #[test]
    fn rsync_verbose_takes_the_next_value_only_when_it_is_a_verbosity() {
        assert_eq!(norm(&["-rsync-verbose", "-vv"]), ["--rsync-verbose=-vv"]);
        assert_eq!(
            norm(&["--rsync-verbose", "-v", "-v"]),
            ["--rsync-verbose=-v", "-v"]
        );
        assert_eq!(
            norm(&["--rsync-verbose", "--timeout=3"]),
            ["--rsync-verbose", "--timeout=3"]
        );
    }

    #[test]
    fn durations_accept_seconds_and_humantime() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_limits_default_to_the_documented_values_and_0_lifts_a_maximum() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            deploy: DeployFlags,
        }
        let parse = |args: &[&str]| {
            let argv = std::iter::once("cutover").chain(args.iter().copied());
            Cli::try_parse_from(argv)
                .expect("flags parse")
                .deploy
                .limits()
        };
        assert_eq!(parse(&[]), Limits::default());
        let set = parse(&["--max-unpacked-size", "10MiB", "--max-entries", "0"]);
        assert_eq!(set.max_unpacked_size, 10 << 20);
        assert_eq!(set.max_entries, u64::MAX);
    }

    #[test]
    fn bandwidth_units_follow_go_humanize() {
        assert_eq!(parse_bandwidth("1M"), Ok(1_000_000));
        assert_eq!(parse_bandwidth("1MB"), Ok(1_000_000));
        assert_eq!(parse_bandwidth("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bandwidth("500k"), Ok(500_000));
        assert_eq!(parse_bandwidth("2G"), Ok(2_000_000_000));
        assert_eq!(parse_bandwidth("1.5K"), Ok(1500));
        assert_eq!(parse_bandwidth("4096"), Ok(4096));
        assert!(parse_bandwidth("fast").is_err());
        assert!(parse_bandwidth("1X").is_err());
    }
}
