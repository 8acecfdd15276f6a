//! The agent: a one-shot, stretcher-compatible deploy of one manifest.
//!
//! Order of work (the contract in `spec/stretcher-compat.md`): parse input → fetch manifest →
//! fetch `src` (hash + unpack in one streaming pass) → verify → pre hooks → place files → post
//! hooks → [app manifest: deploy request to the supervisor] → success/failure hooks → exit code.

pub mod checksum;
pub mod log;
pub mod pipeline;
pub mod release;
pub mod source;
pub mod unpack;
