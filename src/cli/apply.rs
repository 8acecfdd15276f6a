//! `cutover apply`.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct ApplyArgs {}

pub fn run(args: ApplyArgs, global: &GlobalArgs) -> ExitCode {
    let _ = (args, global);
    todo!("cutover apply")
}
