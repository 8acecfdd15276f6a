//! The supervisor: a resident daemon that runs each app's instances behind its own proxy,
//! health-checks them, and runs the blue-green and rollback state machines.

pub mod app;
pub mod apps;
pub mod deploy;
pub mod health;
pub mod process;
pub mod proxy;
pub mod recovery;
pub mod releases;
pub mod rollback;
pub mod store;
