//! `cutover status`.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct StatusArgs {}

pub fn run(args: StatusArgs, global: &GlobalArgs) -> ExitCode {
    let _ = (args, global);
    todo!("cutover status")
}
