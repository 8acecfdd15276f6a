//! cutover's integration tests: one binary, real processes, real rsync, real HTTP.
//!
//! Each module is one area; `support` is the shared harness (temp dirs, the real binary, servers,
//! `wait_until` instead of sleeps).

mod support;

mod agent;
mod cli;
mod control;
mod fetch;
mod fleet;
mod process;
mod proxy;
mod supervisor;
mod tidy;
mod watch;
