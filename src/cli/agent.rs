//! The agent's flags in both stretcher generations (`-timeout 10` and `--timeout=10s`), and the
//! agent run with its exit code (always 0 under `consul watch`).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct AgentArgs {}

/// Rewrites stretcher v1 single-dash long flags to the double-dash spelling clap understands.
pub fn normalize_args(argv: Vec<OsString>) -> Vec<OsString> {
    argv
}

pub fn run(args: AgentArgs, global: &GlobalArgs) -> ExitCode {
    let _ = (args, global);
    todo!("agent")
}
