//! The supervisor's admin address (`cutover supervise --metrics-listen ADDR`). A stand-in until
//! the admin server lands from the `metrics` branch: only what the dashboard builds against.

pub mod dashboard;
pub mod site;
