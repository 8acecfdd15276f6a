//! `cutover demo` (the README's main job) and the hidden `cutover demo-app` it deploys.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct DemoArgs {}

#[derive(Debug, Args)]
pub struct DemoAppArgs {}

pub fn run(args: DemoArgs, global: &GlobalArgs) -> ExitCode {
    let _ = (args, global);
    todo!("cutover demo")
}

pub fn run_app(args: DemoAppArgs) -> ExitCode {
    let _ = args;
    todo!("cutover demo-app")
}
