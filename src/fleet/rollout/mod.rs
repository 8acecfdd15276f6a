//! A coordinated rollout of one app across the members of a Serf cluster: plan the batches, have
//! every target stage the release (download, verify, unpack, no switch), then switch batch by
//! batch through the nodes' query handlers, gate each node on its own health, and halt and revert
//! when too many nodes fail.
//!
//! Every wait has a deadline: a node that stops answering is reported as unreachable after
//! `unreachable_after` and the rollout goes on without it (it counts as not serving for
//! `min_healthy`); a node that answers but never serves the new version fails after `node_timeout`.
//!
//! `batches` plans (members → batches, changing nothing), `stage` has every target stage the
//! release before any switch, `run` runs a plan and reverts on a halt, `ask` sends the queries
//! and follows the nodes' status; `inputs` (what to roll out, how) and `outcome` (progress, how
//! it ended) are the types they share.

mod ask;
mod batches;
mod inputs;
mod outcome;
mod run;
mod stage;

pub use batches::{plan, plan_text, Plan, RolloutError, Target};
pub use inputs::{Options, Step};
pub use outcome::{Progress, Report};
pub use run::run;
