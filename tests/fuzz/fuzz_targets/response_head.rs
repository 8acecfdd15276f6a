//! Fuzz target `response_head`: an instance's answer (head and body) as the proxy reads it, cut in two reads.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cutover::fuzz::response_head(data));
