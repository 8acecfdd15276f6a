//! Rollouts: how a new (or an earlier) release of an app replaces the live one.
//!
//! - `contract`: what the app task and a rollout share ([`Rollout`], its [`RolloutKind`], the
//!   [`AppTaskLink`] back into the app task, the [`Switchover`], a canary's [`CanaryDecision`]);
//! - `deploy`: blue-green as one straight line, the strategy every rollout runs, with
//!   `canary_steps` inside it for a canary release, judged by `analysis` and traced for
//!   `status` by `canary_trace`;
//! - `rollback`: which release a rollback goes back to, marking releases bad;
//! - `releases`: the release directories on disk (`current` swap, listing, pruning).
//!
//! The app task (`supervisor::app`) starts rollouts and answers their requests; nothing here
//! imports it.

pub mod analysis;
pub mod canary_steps;
pub mod canary_trace;
pub mod contract;
pub mod deploy;
pub mod releases;
pub mod rollback;

pub use canary_trace::CanaryTrace;
pub use contract::{
    AppContext, AppEvent, AppTaskLink, CanaryDecision, Rollout, RolloutKind, Switchover,
};
