//! Routes and picking: an app's route (its backends, balance and canary share), each worker's
//! copy of it and the pick of an instance for each request or connection (`table`), a canary's
//! share and its sticky cookie (`split`), one instance with its idle connections and counters
//! (`backend`), and those counters by slot (`counters`, their latency in `histogram`).
//!
//! The files stand in layers: `table` uses `split`, which uses `backend`, which uses `counters`.

mod backend;
mod counters;
mod split;
mod table;

pub use backend::Backend;
pub use counters::{BackendStats, Slot, SlotStats};
pub use split::{CanaryRoute, Side};
pub use table::Route;

pub(super) use backend::{BackendState, Routed, SendError};
pub(super) use split::{Choice, Split};
pub(super) use table::{next_backend, rerouted, sides, Hold, InFlight, Lane, Table};
