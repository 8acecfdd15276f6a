//! Fleet tests: real Serf agents on 127.0.0.1, each node with its own supervisor, state dir and
//! ports; `cutover rollout`, `serf-handler` and `fleet-status` run as the real binary. The
//! harness (`Fleet`, `release`) is in `support/fleet.rs`, its Serf agents in `support/serf.rs`.
//!
//! `plumbing` needs only Serf; `rollouts`, `staging` and `catchup` need the supervisor and the
//! agent too.

mod catchup;
mod plumbing;
mod rollouts;
mod staging;
