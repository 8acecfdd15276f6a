//! Many hosts: coordinated rollouts, fleet status and catching up, all carried by HashiCorp Serf.
//!
//! cutover adds no gossip and no consensus: Serf's membership says who is in the fleet, its tags
//! say what each node runs, its queries carry deploy/status/rollback requests to each node's
//! handler, and its encryption (`-encrypt KEY`) keeps strangers out.
//!
//! ```text
//! coordinator (`cutover rollout`)          every node
//!   serf::members  ── gossip ──▶          serf agent -event-handler "cutover serf-handler"
//!   serf::query cutover-deploy   ───────▶   handler: answers "accepted", starts worker (apply)
//!   serf::query cutover-status   ───────▶   handler: `cutover status --json`, compact answer
//!   serf::query cutover-rollback ───────▶   handler: starts worker (rollback)
//!                                          worker ends: `serf tags -set cutover.APP=VERSION`
//!                                          member-join of itself: catch-up to the majority
//! ```

pub mod catchup;
pub mod handler;
pub mod manifest;
pub mod node;
pub mod plan;
pub mod query_size;
pub mod rollout;
pub mod serf;
pub mod status;
pub mod tags;
pub mod wire;
pub mod worker;
