//! One task per app: the only owner of the app's record and instances, driven by a closed set of
//! controls, each with a reply (the watchexec "job" shape).
//!
//! The task never waits on a rollout: a deploy or rollback runs as its own task
//! (`rollout::deploy::run`) and asks this one, through its `AppTaskLink`, to start candidates and
//! to switch; meanwhile `status` is answered at once and instance events keep the route right.
//! Instances are tasks too (`supervisor::instance`), so the app task only ever awaits short
//! things.
//!
//! `task.rs` holds the task's types and its record and instance bookkeeping; the loop and its
//! handlers are in `controls.rs`, the rollout's side and the route in `rollouts.rs`, the
//! operator's `promote`/`abort` in `decide.rs`, `status` and `logs` in `status.rs`.

mod controls;
mod decide;
mod rollouts;
mod status;
mod task;

pub use task::{loopback_for, AppHandle, AppTask, Control};
