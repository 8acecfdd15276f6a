//! Fetching and unpacking: sources (file, HTTP, S3), checksums, formats and hostile archives.
