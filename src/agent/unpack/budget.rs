//! What an unpack may still write: bytes and entries against [`Limits`], and the free space and
//! inodes of the staging directory's filesystem, looked at again and again as the unpack proceeds
//! (a check at the start alone would let one archive fill the disk).

use std::path::Path;

use super::UnpackError;
use crate::agent::limits::{Limits, Size};

/// Free space and inodes are looked at again after this many bytes (written or spooled)...
const CHECK_EVERY_BYTES: u64 = 16 << 20;
/// ...or this many entries, whichever comes first: a statvfs is cheap, but not free.
const CHECK_EVERY_ENTRIES: u64 = 1024;

/// The running totals of one unpack.
#[derive(Debug)]
pub struct Budget<'a> {
    limits: Limits,
    /// Where free space is measured: the staging root.
    root: &'a Path,
    url: &'a str,
    bytes: u64,
    entries: u64,
    bytes_since_check: u64,
    entries_since_check: u64,
}

impl<'a> Budget<'a> {
    /// A budget for an unpack into `root`; fails when its filesystem is already below a reserve.
    pub fn new(limits: Limits, root: &'a Path, url: &'a str) -> Result<Budget<'a>, UnpackError> {
        let mut budget = Budget {
            limits,
            root,
            url,
            bytes: 0,
            entries: 0,
            bytes_since_check: 0,
            entries_since_check: 0,
        };
        budget.check_free()?;
        Ok(budget)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Entries created so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Counts `n` entries about to be created.
    pub fn take_entries(&mut self, n: u64) -> Result<(), UnpackError> {
        self.entries = self.entries.saturating_add(n);
        if self.entries > self.limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                url: self.url.to_owned(),
                limit: self.limits.max_entries,
            });
        }
        self.entries_since_check += n;
        if self.entries_since_check >= CHECK_EVERY_ENTRIES {
            self.check_free()?;
        }
        Ok(())
    }

    /// Counts `n` bytes of file content about to be written.
    pub fn take_bytes(&mut self, n: u64) -> Result<(), UnpackError> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.limits.max_unpacked_size {
            return Err(UnpackError::TooLarge {
                url: self.url.to_owned(),
                limit: Size(self.limits.max_unpacked_size),
            });
        }
        self.spooled(n)
    }

    /// Counts `n` bytes written to disk that are not content (a zip's spool): only the free
    /// space has a say on them.
    pub fn spooled(&mut self, n: u64) -> Result<(), UnpackError> {
        self.bytes_since_check += n;
        if self.bytes_since_check >= CHECK_EVERY_BYTES {
            self.check_free()?;
        }
        Ok(())
    }

    /// Fails when the filesystem holding the root is below a reserve.
    pub fn check_free(&mut self) -> Result<(), UnpackError> {
        self.bytes_since_check = 0;
        self.entries_since_check = 0;
        let stat = nix::sys::statvfs::statvfs(self.root).map_err(|errno| UnpackError::Write {
            url: self.url.to_owned(),
            path: self.root.to_owned(),
            source: errno.into(),
        })?;
        // f_bavail, not f_bfree: the blocks ext4 keeps for root are the host's last resort, and
        // an agent running as root must not take them.
        let free = (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64);
        if free < self.limits.min_free_space {
            return Err(UnpackError::LowSpace {
                url: self.url.to_owned(),
                dir: self.root.to_owned(),
                free: Size(free),
                reserve: Size(self.limits.min_free_space),
            });
        }
        // A filesystem without a fixed inode table (btrfs) reports no inodes at all.
        let inodes = stat.files_available() as u64;
        if stat.files() > 0 && inodes < self.limits.min_free_inodes {
            return Err(UnpackError::LowInodes {
                url: self.url.to_owned(),
                dir: self.root.to_owned(),
                free: inodes,
                reserve: self.limits.min_free_inodes,
            });
        }
        Ok(())
    }
}
