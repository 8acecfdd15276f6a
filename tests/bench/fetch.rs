//! Benchmark: fetch → verify → unpack of a ~200 MB tar.gz, cutover beside curl+sha256sum+tar.
fn main() {}
