//! `cutover stop APP [--json]`: stops an app's instances and closes its public address; its files stay.

use std::process::ExitCode;

use clap::Args;

use super::remote;
use super::GlobalArgs;
use crate::protocol::{Request, Response, StopRequest};

#[derive(Debug, Args)]
pub struct StopArgs {
    /// The app
    pub app: String,
    /// Print the outcome as JSON ({"app", "stopped"}); progress stays on stderr
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StopArgs, global: &GlobalArgs) -> ExitCode {
    let request = Request::Stop(StopRequest { app: args.app });
    match remote::call(global, request, |p| eprintln!("{}: {}", p.app, p.message)) {
        Ok(Response::Stopped(outcome)) if args.json => remote::print_json(&outcome),
        Ok(Response::Stopped(outcome)) => {
            println!(
                "stopped {} ({} instance{})",
                outcome.app,
                outcome.stopped,
                if outcome.stopped == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Ok(other) => remote::unexpected("stop", &other),
        Err(code) => code,
    }
}
