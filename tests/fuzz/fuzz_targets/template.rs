//! Fuzz target `template`: the manifest's Go-template subset on its own.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cutover::fuzz::template(data));
