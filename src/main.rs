//! The `cutover` binary: parses the command line and hands over to the library.
//!
//! Everything of substance lives in the library (`cutover::cli`), so that tests reach it too.

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: the proxy allocates and frees a little on every request,
/// from one thread per core, where glibc's arenas cost it about a tenth of its time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cutover::cli::main(std::env::args_os().collect())
}
