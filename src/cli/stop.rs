//! `cutover stop`.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct StopArgs {}

pub fn run(args: StopArgs, global: &GlobalArgs) -> ExitCode {
    let _ = (args, global);
    todo!("cutover stop")
}
