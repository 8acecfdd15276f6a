//! `cutover rollback`.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct RollbackArgs {}

pub fn run(args: RollbackArgs, global: &GlobalArgs) -> ExitCode {
    let _ = (args, global);
    todo!("cutover rollback")
}
