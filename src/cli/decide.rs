//! `cutover promote APP` and `cutover abort APP`: the operator's decision on a running canary.
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
}

/// `promote: true` ends the canary with a full switch; `false` backs it out.
pub fn run(args: DecideArgs, promote: bool, global: &GlobalArgs) -> ExitCode {
    let request = CanaryRequest { app: args.app };
    let (verb, request) = if promote {
        ("promote", Request::Promote(request))
    } else {
        ("abort", Request::Abort(request))
    };
    match remote::call(global, request, |_| {}) {
        Ok(Response::Decided(reply)) => {
            println!("{}: {}", reply.app, reply.message);
            ExitCode::SUCCESS
        }
        Ok(other) => remote::unexpected(verb, &other),
        Err(code) => code,
    }
}
