//! `cutover watch`: the resident watcher of GitHub releases, manifest URLs and webhooks, and its
//! `--status` report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::logging;
use super::GlobalArgs;
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
    /// Kill and fail a deploy that runs longer than this
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub apply_timeout: Duration,
}

pub fn run(args: WatchArgs, global: &GlobalArgs) -> ExitCode {
    let state_dir = global.state_dir();
    if args.status {
        let states = watch::status::load(&state_dir);
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
    let command = match &config.apply_command {
        Some(cmd) => cmd.iter().map(Into::into).collect(),
        None => ApplyCommand::this_binary(),
    };
    let deployer = ApplyCommand {
        command,
        state_dir: state_dir.clone(),
        socket: global.socket.clone(),
        timeout: args.apply_timeout,
    };
    let ctx = Arc::new(Context {
        github: watch::github::GithubClient::new(watch::github::Token::discover()),
        manifests: watch::manifest_poll::ManifestPoller::new(),
        deployer: Arc::new(deployer),
        bad: watch::supervisor::connect(global.socket()),
        deploy_turn: Default::default(),
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
                print!("{}", watch::status::render(&states));
                if failed {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
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
