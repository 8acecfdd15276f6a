//! `cutover supervise`.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct SuperviseArgs {}

pub fn run(args: SuperviseArgs, global: &GlobalArgs) -> ExitCode {
    let _ = (args, global);
    todo!("cutover supervise")
}
