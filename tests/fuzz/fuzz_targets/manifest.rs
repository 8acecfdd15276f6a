//! Fuzz target `manifest`: the agent's manifest parser, template rendering included.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cutover::fuzz::manifest(data));
