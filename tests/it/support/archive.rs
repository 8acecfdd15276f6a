//! Build test archives (tar, tar.gz, xz, bz2, zstd, zip) and hostile ones, in memory or on disk.
