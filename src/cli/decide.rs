//! `cutover promote APP [--json]` and `cutover abort APP [--json]`: the operator's decision on a running canary.
//!
//! The decision is handed to the rollout, which acts at once; the deploy's own client (the agent
//! that started it) reports the outcome and runs its hooks.

use std::process::ExitCode;

use clap::Args;

use super::remote;
use super::GlobalArgs;
use crate::protocol::{CanaryRequest, Request, Response};

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The app whose canary is running
    pub app: String,
    /// Print the supervisor's answer as JSON ({"app", "message"})
    #[arg(long)]
    pub json: bool,
}

/// `cutover promote APP`: ends the canary with a full switch.
pub fn promote(args: DecideArgs, global: &GlobalArgs) -> ExitCode {
    let request = Request::Promote(CanaryRequest { app: args.app });
    send("promote", request, args.json, global)
}

/// `cutover abort APP`: backs the canary out.
pub fn abort(args: DecideArgs, global: &GlobalArgs) -> ExitCode {
    let request = Request::Abort(CanaryRequest { app: args.app });
    send("abort", request, args.json, global)
}

/// Hands the decision to the supervisor and prints its answer.
fn send(verb: &str, request: Request, json: bool, global: &GlobalArgs) -> ExitCode {
    match remote::call(global, request, |_| {}) {
        Ok(Response::Decided(reply)) if json => remote::print_json(&reply),
        Ok(Response::Decided(reply)) => {
            println!("{}: {}", reply.app, reply.message);
            ExitCode::SUCCESS
        }
        Ok(other) => remote::unexpected(verb, &other),
        Err(code) => code,
    }
}
