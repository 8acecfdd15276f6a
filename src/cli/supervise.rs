//! `cutover supervise`: runs the supervisor in the foreground until SIGTERM or SIGINT.
//!
//! Meant to run under systemd (or any service manager): it logs to stderr, binds the control
//! socket (`--socket`), keeps its state in `--state-dir`, and on a stop signal leaves the app
//! processes running so that the next start takes them back.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use super::GlobalArgs;
use crate::supervisor;

#[derive(Debug, Args)]
pub struct SuperviseArgs {}

pub fn run(args: SuperviseArgs, global: &GlobalArgs) -> ExitCode {
    let SuperviseArgs {} = args;
    match supervise(global) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cutover supervise: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn supervise(global: &GlobalArgs) -> anyhow::Result<()> {
    let socket = global.socket();
    let state_dir = global.state_dir();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        // Signal handlers before the socket: a stop signal that arrives once clients can connect
        // must shut down cleanly, not kill the process mid-write.
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let listener = supervisor::bind_socket(&socket)?;
        let bound = std::fs::metadata(&socket).ok().map(|m| inode(&m));
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        let result = supervisor::run(listener, state_dir, shutdown).await;
        // Remove our socket file so clients say "no supervisor" at once; never one that a newer
        // supervisor bound in the meantime.
        let current = std::fs::metadata(&socket).ok().map(|m| inode(&m));
        if bound.is_some() && current == bound {
            let _ = std::fs::remove_file(&socket);
        }
        result
    })
}

fn inode(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}
