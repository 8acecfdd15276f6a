//! The supervisor's admin address (`cutover supervise --metrics-listen ADDR`): a small HTTP/1.1
//! server of its own for operators' tools, off unless asked for, never on an app's public
//! address (`apps` refuses an app whose `listen` is this address, and the supervisor refuses to
//! start with an admin address an app listens on).
//!
//! The files stand in layers, from the top down: `server` (the listener, the accept loop, GET
//! and HEAD only, 404 for unknown paths) → `routes` (the path → handler table: a new page is a
//! line there) → `metrics` (the Prometheus exposition, read at scrape time) → `exposition` (the
//! text-format writer), and `dashboard` (the live page and the JSON it polls) → `site` (what
//! every handler reads, and the answers it builds). The
//! socket is handed to a successor with the apps' (`supervisor::handover`).

pub mod dashboard;
mod exposition;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod site;

pub use server::{bind, serve};
pub use site::{Body, Handler, Site};
