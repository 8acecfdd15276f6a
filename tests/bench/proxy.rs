//! Benchmark: proxy overhead, direct vs cutover vs nginx against the same backend.
fn main() {}
