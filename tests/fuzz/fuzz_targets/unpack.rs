//! Fuzz target `unpack`: arbitrary bytes as an archive, unpacked with the limits on into a temp
//! dir (in /dev/shm when there is one: thousands of runs a second), checking nothing escapes.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn scratch() -> &'static Path {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| cutover::fuzz::unpack(data, scratch()));
