//! `cutover releases`.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct ReleasesArgs {}

pub fn run(args: ReleasesArgs, global: &GlobalArgs) -> ExitCode {
    let _ = (args, global);
    todo!("cutover releases")
}
