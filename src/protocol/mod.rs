//! The whole agent↔supervisor contract: requests, responses, the frame codec and the client.
//!
//! This module depends on nothing else of ours, so both sides (and tests) can use it alone.

pub mod app;
pub mod canary;
pub mod client;
pub mod codec;
pub mod handover;
pub mod layout;
pub mod messages;
pub mod routes;
pub mod tls;
pub mod upstream;

pub use app::AppSpec;
pub use messages::*;
