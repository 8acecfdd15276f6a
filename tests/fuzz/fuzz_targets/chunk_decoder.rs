//! Fuzz target `chunk_decoder`: a chunked body as the proxy decodes it, cut in two reads.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cutover::fuzz::chunk_decoder(data));
