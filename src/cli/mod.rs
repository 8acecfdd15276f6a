//! The command line: clap definitions, one file per verb, and the mapping of results to exit codes.
//!
//! With no verb, `cutover` is the stretcher-compatible agent reading a manifest URL from stdin;
//! stretcher's single-dash flags are rewritten to their double-dash spelling before clap sees them.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::agent::trust::{Trust, TrustError};

pub mod agent;
pub mod apply;
pub mod completions;
pub mod decide;
pub mod demo;
pub mod fleet;
pub mod logging;
pub mod logs;
pub mod man;
pub mod releases;
mod remote;
pub mod rollback;
pub mod status;
pub mod stop;
pub mod supervise;
pub mod values;
pub mod watch;

/// Zero-downtime deploys onto Linux hosts.
///
/// Without a verb, reads a manifest URL from stdin (a plain line, a `consul watch` event array or a
/// `serf` user event) and deploys it, like stretcher.
#[derive(Debug, Parser)]
#[command(name = "cutover", disable_version_flag = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub agent: agent::AgentArgs,
}

/// Options every verb understands.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Directory for locks, replay marks and the supervisor's state [default: /var/lib/cutover for
    /// root, ~/.local/state/cutover otherwise]
    #[arg(long, env = "CUTOVER_STATE_DIR", global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The supervisor's control socket [default: /run/cutover/cutover.sock for root,
    /// $XDG_RUNTIME_DIR/cutover/cutover.sock otherwise]
    #[arg(long, env = "CUTOVER_SOCKET", global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Trusted minisign keys: with this file, only signed manifests are deployed [default:
    /// /etc/cutover/trust.yml when it exists]
    #[arg(long, env = "CUTOVER_TRUST", global = true, value_name = "FILE")]
    pub trust: Option<PathBuf>,
    /// How the supervisor, the watcher and the agent write their log lines on stderr: readable
    /// text, or one JSON object per line
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        value_name = "FORMAT"
    )]
    pub log_format: logging::LogFormat,
}

impl GlobalArgs {
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(crate::paths::default_state_dir)
    }

    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(crate::paths::default_socket)
    }

    /// The trusted keys (`--trust`, else /etc/cutover/trust.yml when present), or unsigned mode.
    pub fn trust(&self) -> Result<Trust, TrustError> {
        Trust::load(self.trust.as_deref())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy one manifest (URL or local path) without reading stdin
    Apply(apply::ApplyArgs),
    /// Run the supervisor: the resident daemon that runs, routes and health-checks apps
    Supervise(supervise::SuperviseArgs),
    /// Show apps, versions, instances, traffic and health
    Status(status::StatusArgs),
    /// List an app's kept releases and which is live or bad
    Releases(releases::ReleasesArgs),
    /// Go back to the previous good release of an app (or a named one)
    Rollback(rollback::RollbackArgs),
    /// End a running canary now: switch all traffic to the new release
    Promote(decide::DecideArgs),
    /// Back a running canary out: its share to 0, drain, stop, mark the release bad
    Abort(decide::DecideArgs),
    /// Stop an app: its instances, its public address; its files stay
    Stop(stop::StopArgs),
    /// Show an app's instance logs
    Logs(logs::LogsArgs),
    /// Run the bundled demo: a supervisor in a temp dir, v1 then v2 blue-green under load
    Demo(demo::DemoArgs),
    /// Roll a release out across a Serf cluster, batch by batch, health-gated, with revert
    Rollout(fleet::RolloutArgs),
    /// Every Serf member's app versions and health
    FleetStatus(fleet::FleetStatusCommand),
    /// The Serf event and query handler (`serf agent -event-handler "cutover serf-handler"`)
    SerfHandler(fleet::SerfHandlerArgs),
    /// The bundled demo app: a small HTTP server with fault injection (used by the demo and tests)
    #[command(hide = true)]
    DemoApp(demo::DemoAppArgs),
    /// Watch GitHub releases and manifest URLs (and receive webhooks); deploy what is new
    Watch(watch::WatchArgs),
    /// Print the shell completion script for bash, zsh or fish
    Completions(completions::CompletionsArgs),
    /// Print the manual page (roff), or write one page per verb with --dir
    Man(man::ManArgs),
}

/// Parses `argv`. The agent's own flags make no sense with a verb (`cutover --timeout 5 status`)
/// and are refused, while the global `--state-dir`/`--socket` go before or after the verb.
/// (clap's `args_conflicts_with_subcommands` would refuse the global ones too.)
fn parse(argv: Vec<OsString>) -> Result<Cli, clap::Error> {
    use clap::parser::ValueSource;
    use clap::FromArgMatches;

    let mut command = Cli::command();
    let matches = command.try_get_matches_from_mut(argv)?;
    if let Some((verb, _)) = matches.subcommand() {
        let agent_flags = <agent::AgentArgs as Args>::augment_args(clap::Command::new("agent"));
        let misplaced = agent_flags
            .get_arguments()
            .map(|arg| arg.get_id().as_str())
            .find(|id| matches.value_source(id) == Some(ValueSource::CommandLine));
        if let Some(id) = misplaced {
            return Err(command.error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("'{id}' is an agent option and cannot come before the verb '{verb}'; put it after the verb if '{verb}' takes it"),
            ));
        }
    }
    Cli::from_arg_matches(&matches).map_err(|err| err.format(&mut command))
}

/// Entry point of the binary: parses `argv`, runs the verb and maps the result to an exit code.
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let under_consul = std::env::var_os("CONSUL_INDEX").is_some();
    let argv = agent::normalize_args(argv);
    let cli = match parse(argv) {
        Ok(cli) => cli,
        Err(err) => {
            let code = err.exit_code();
            let _ = err.print();
            // A non-zero exit stops the whole `consul watch`: under consul, even a bad flag is 0.
            return if under_consul || code == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    logging::init(cli.global.log_format);
    match cli.command {
        None => agent::run(cli.agent, &cli.global),
        Some(Command::Apply(args)) => apply::run(args, &cli.global),
        Some(Command::Supervise(args)) => supervise::run(args, &cli.global),
        Some(Command::Status(args)) => status::run(args, &cli.global),
        Some(Command::Releases(args)) => releases::run(args, &cli.global),
        Some(Command::Rollback(args)) => rollback::run(args, &cli.global),
        Some(Command::Logs(args)) => logs::run(args, &cli.global),
        Some(Command::Stop(args)) => stop::run(args, &cli.global),
        Some(Command::Promote(args)) => decide::promote(args, &cli.global),
        Some(Command::Abort(args)) => decide::abort(args, &cli.global),
        Some(Command::Demo(args)) => demo::run(args, &cli.global),
        Some(Command::DemoApp(args)) => demo::run_app(args),
        Some(Command::Rollout(args)) => fleet::rollout(args, &cli.global),
        Some(Command::FleetStatus(verb)) => fleet::fleet_status(verb.args, verb.json, &cli.global),
        Some(Command::SerfHandler(args)) => fleet::serf_handler(args, &cli.global),
        Some(Command::Watch(args)) => watch::run(args, &cli.global),
        Some(Command::Completions(args)) => {
            completions::run(args, <Cli as CommandFactory>::command())
        }
        Some(Command::Man(args)) => man::run(args, <Cli as CommandFactory>::command()),
    }
}
