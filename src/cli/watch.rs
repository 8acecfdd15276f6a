//! `cutover watch`: the resident watcher of GitHub releases, manifest URLs and webhooks, and its
//! `--status` report (`--json` for scripts).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::logging;
use super::GlobalArgs;
use crate::watch::config::Source;
use crate::watch::{self, ApplyCommand, Context};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The watch configuration (see manifests/watch.yml)
    #[arg(long, value_name = "FILE", required_unless_present = "status")]
    pub config: Option<PathBuf>,
    /// Print each watch's last check, last seen version and skipped versions, then exit
    #[arg(long)]
    pub status: bool,
    /// Check every watch once and exit (for cron or a systemd timer); exit 1 if a check failed
    #[arg(long, conflicts_with = "status")]
    pub once: bool,
    /// With --status or --once: print the watches' states as one JSON array (the fields of
    /// state_dir/watch/NAME.json)
    #[arg(long)]
    pub json: bool,
    /// Kill and fail a deploy that runs longer than this
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub apply_timeout: Duration,
}

pub fn run(args: WatchArgs, global: &GlobalArgs) -> ExitCode {
    let state_dir = global.state_dir();
    if args.json && !args.status && !args.once {
        // The resident watcher prints nothing on stdout: its log is on stderr.
        eprintln!("cutover watch: --json goes with --status or --once; the resident watcher logs on stderr");
        return ExitCode::from(2);
    }
    if args.status {
        let states = watch::status::load(&state_dir);
        if args.json {
            return super::remote::print_json(&states);
        }
        if states.is_empty() {
            println!(
                "no watch has run with state dir {}; start one with `cutover watch --config FILE`",
                state_dir.display()
            );
        }
        print!("{}", watch::status::render(&states));
        return ExitCode::SUCCESS;
    }
    let Some(path) = args.config.as_deref() else {
        logging::fatal(
            global.log_format,
            "cutover watch",
            "--config FILE is required",
        );
        return ExitCode::from(2);
    };
    let (config, watches) = match watch::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            logging::fatal(global.log_format, "cutover watch", format_args!("{e}"));
            return ExitCode::from(2);
        }
    };
    let trust = match global.trust() {
        Ok(trust) => trust,
        Err(e) => {
            eprintln!("cutover watch: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(keys) = trust.keys() {
        // A GitHub watch renders its manifest here, from `template:`: no trusted key signed it,
        // so every deploy of it would be refused.
        if let Some(watch) = watches
            .iter()
            .find(|w| matches!(w.source, Source::Github(_)))
        {
            eprintln!(
                "cutover watch: watch {} renders its manifests from `template:`, which no trusted key signs, and {} requires signed manifests: watch a signed manifest URL (`manifest:`) instead",
                watch.name,
                keys.path.display()
            );
            return ExitCode::from(2);
        }
    }
    let command = match &config.apply_command {
        Some(cmd) => cmd.iter().map(Into::into).collect(),
        None => ApplyCommand::this_binary(),
    };
    let deployer = ApplyCommand {
        command,
        state_dir: state_dir.clone(),
        socket: global.socket.clone(),
        trust: global.trust.clone(),
        timeout: args.apply_timeout,
    };
    let ctx = Arc::new(Context {
        github: watch::github::GithubClient::new(watch::github::Token::discover()),
        manifests: watch::manifest_poll::ManifestPoller::new(),
        deployer: Arc::new(deployer),
        bad: watch::supervisor::connect(global.socket()),
        deploy_turn: Default::default(),
        signed: trust.keys().is_some(),
        state_dir,
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            logging::fatal(
                global.log_format,
                "cutover watch",
                format_args!("cannot start the async runtime: {e}"),
            );
            return ExitCode::FAILURE;
        }
    };
    if args.once {
        return match runtime.block_on(watch::run_once(&watches, &ctx)) {
            Ok(states) => {
                let failed = states.iter().any(|s| {
                    s.last_check_result
                        .as_deref()
                        .is_some_and(|r| r.starts_with("error") || r.contains("failed"))
                });
                let printed = if args.json {
                    super::remote::print_json(&states)
                } else {
                    print!("{}", watch::status::render(&states));
                    ExitCode::SUCCESS
                };
                if failed {
                    ExitCode::FAILURE
                } else {
                    printed
                }
            }
            Err(e) => {
                logging::fatal(global.log_format, "cutover watch", format_args!("{e}"));
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(watch::run(config, watches, ctx, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::fatal(global.log_format, "cutover watch", format_args!("{e}"));
            ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM (systemd's stop).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("watch: shutting down");
}
