//! cutover: zero-downtime deploys onto Linux hosts.
#![doc = include_str!("ARCHITECTURE.md")]

pub mod agent;
pub mod cli;
pub mod demo;
pub mod fleet;
#[doc(hidden)]
pub mod fuzz;
pub mod paths;
pub mod protocol;
pub mod supervisor;
pub mod watch;
