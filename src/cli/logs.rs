//! `cutover logs`.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct LogsArgs {}

pub fn run(args: LogsArgs, global: &GlobalArgs) -> ExitCode {
    let _ = (args, global);
    todo!("cutover logs")
}
