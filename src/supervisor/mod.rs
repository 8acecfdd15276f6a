//! The supervisor: a resident daemon that runs each app's instances behind its own proxy,
//! health-checks them, and runs the blue-green and rollback state machines.

pub mod apps;
pub mod health;
pub mod process;
pub mod proxy;
