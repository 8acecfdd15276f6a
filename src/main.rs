//! The `cutover` binary: parses the command line and hands over to the library.
//!
//! Everything of substance lives in the library (`cutover::cli`), so that tests reach it too.

use std::process::ExitCode;

fn main() -> ExitCode {
    cutover::cli::main(std::env::args_os().collect())
}
