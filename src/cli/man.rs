//! `cutover man [--dir DIR]`: the manual page in roff, rendered by clap_mangen from the clap
//! definitions; on stdout (`cutover man | man -l -`), or one page per verb written into DIR.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write cutover.1 and one cutover-VERB.1 per verb into this directory instead of printing
    /// the main page (e.g. /usr/local/share/man/man1)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the main page, or writes every page into `--dir`; `cli` is the whole command tree.
pub fn run(args: ManArgs, cli: clap::Command) -> ExitCode {
    let result = match &args.dir {
        None => clap_mangen::Man::new(cli).render(&mut std::io::stdout().lock()),
        Some(dir) => write_pages(cli, dir),
    };
    match (result, &args.dir) {
        (Ok(()), _) => ExitCode::SUCCESS,
        (Err(err), Some(dir)) => {
            eprintln!(
                "cutover man: could not write the pages into {}: {err}; check that the directory exists and is writable",
                dir.display()
            );
            ExitCode::FAILURE
        }
        // stdout closed early (`| head`): nothing left to do.
        (Err(err), None) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        (Err(err), None) => {
            eprintln!("cutover man: could not print the page: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `cutover.1` for the whole tool and `cutover-VERB.1` for each verb that is not hidden
/// (clap_mangen names and titles them, and leaves clap's `help` pseudo-verb out).
fn write_pages(cli: clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(cli, dir)
}
