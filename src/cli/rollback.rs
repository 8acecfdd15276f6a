//! `cutover rollback APP [VERSION] [--json]`: back to the previous good release (or a named kept one),
//! health-gated, with the rollout's progress streamed as it happens.

use std::process::ExitCode;

use clap::Args;

use super::remote;
use super::GlobalArgs;
use crate::protocol::{Request, Response, RollbackRequest};

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The app
    pub app: String,
    /// A kept release to go back to [default: the previous good one]
    pub version: Option<String>,
    /// Print the outcome as JSON ({"app", "version", "previous"}); progress stays on stderr
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: RollbackArgs, global: &GlobalArgs) -> ExitCode {
    let request = Request::Rollback(RollbackRequest {
        app: args.app,
        version: args.version,
    });
    let progress = |p: &crate::protocol::Progress| eprintln!("{}: {}", p.app, p.message);
    match remote::call(global, request, progress) {
        Ok(Response::RolledBack(outcome)) if args.json => remote::print_json(&outcome),
        Ok(Response::RolledBack(outcome)) => {
            match outcome.previous {
                Some(from) => println!(
                    "{} rolled back to {} (from {from})",
                    outcome.app, outcome.version
                ),
                None => println!("{} rolled back to {}", outcome.app, outcome.version),
            }
            ExitCode::SUCCESS
        }
        Ok(other) => remote::unexpected("rollback", &other),
        Err(code) => code,
    }
}
