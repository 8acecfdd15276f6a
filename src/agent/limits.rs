//! The host's limits on what a manifest's author may ship: how large `src` and its unpacked tree
//! may be, how many entries it may hold, and how much space and how many inodes must stay free on
//! `dest`'s filesystem while it unpacks.
//!
//! They protect the host from the manifest, so they come from the agent's flags (or their
//! `CUTOVER_*` variables), never from the manifest. The defaults leave room for the largest real
//! releases (a big Node or Java release is a few GiB in a few hundred thousand files) and stop a
//! compression bomb, an endless download or a million empty files long before the disk is full.

use std::fmt;

/// `--max-src-size`: a compressed archive is smaller than what it unpacks to.
pub const DEFAULT_MAX_SRC_SIZE: u64 = 16 << 30;
/// `--max-unpacked-size`: four times a few-GiB release.
pub const DEFAULT_MAX_UNPACKED_SIZE: u64 = 16 << 30;
/// `--max-entries`: twice the few hundred thousand files of a large `node_modules` tree.
pub const DEFAULT_MAX_ENTRIES: u64 = 500_000;
/// `--min-free-space`: what the host's own services (logs, databases) keep to write into.
pub const DEFAULT_MIN_FREE_SPACE: u64 = 1 << 30;
/// `--min-free-inodes`: likewise for files created by the host's services meanwhile.
pub const DEFAULT_MIN_FREE_INODES: u64 = 10_000;

/// The limits of one deploy; `u64::MAX` (a flag set to 0) means no limit, 0 no reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of `src` as downloaded (compressed).
    pub max_src_size: u64,
    /// Bytes of file content written while unpacking.
    pub max_unpacked_size: u64,
    /// Files, directories and links created while unpacking, the directories an entry's path
    /// only implies included (each one takes an inode).
    pub max_entries: u64,
    /// Bytes that must stay free (for unprivileged users) on the staging directory's filesystem.
    pub min_free_space: u64,
    /// Inodes that must stay free there.
    pub min_free_inodes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_src_size: DEFAULT_MAX_SRC_SIZE,
            max_unpacked_size: DEFAULT_MAX_UNPACKED_SIZE,
            max_entries: DEFAULT_MAX_ENTRIES,
            min_free_space: DEFAULT_MIN_FREE_SPACE,
            min_free_inodes: DEFAULT_MIN_FREE_INODES,
        }
    }
}

/// A byte count as the flags take it: "16 GiB", "1.5 MiB", "512 bytes".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        if self.0 < 1024 {
            return write!(f, "{} bytes", self.0);
        }
        let mut value = self.0 as f64;
        let mut unit = "";
        for u in UNITS {
            value /= 1024.0;
            unit = u;
            if value < 1024.0 {
                break;
            }
        }
        if value.fract() == 0.0 {
            write!(f, "{value:.0} {unit}")
        } else {
            write!(f, "{value:.1} {unit}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_the_flags_are_written() {
        assert_eq!(Size(16 << 30).to_string(), "16 GiB");
        assert_eq!(Size(10 << 20).to_string(), "10 MiB");
        assert_eq!(Size(3 << 19).to_string(), "1.5 MiB");
        assert_eq!(Size(512).to_string(), "512 bytes");
    }
}
