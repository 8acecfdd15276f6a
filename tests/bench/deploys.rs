//! Benchmark: 50 consecutive blue-green deploys under load, and the idle supervisor's footprint.
fn main() {}
