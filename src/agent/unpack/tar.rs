//! The tar entry loop: every entry is judged by [`Writer`] before anything is written, instead
//! of trusting `tar::Archive::unpack`, which would happily create devices or setuid files.
//!
//! The decompressed stream is metered too ([`Meter`]): the tar crate reads a long name or a pax
//! record whole into memory, and skips data nobody writes (a global header, what follows the
//! end of the archive) without a limit, so a gzip bomb could fill memory or keep a core busy
//! for hours without ever writing a byte.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use tar::EntryType;

use super::entries::{mtime_from_secs, Writer};
use super::UnpackError;
use crate::agent::limits::{Limits, Size};

/// What tar adds to each entry beyond its content: a 512-byte header and up to 511 bytes of
/// padding, and room for a long name or a pax record besides.
const OVERHEAD_PER_ENTRY: u64 = 2048;
/// The most a long name, long link or pax record (read whole by the tar crate) may hold.
const MAX_METADATA: u64 = 1 << 20;

/// Unpacks a (decompressed) tar stream, then reads it to the end so that a compressed
/// stream's trailer (gzip's CRC, xz's index) is checked and the feed reaches end-of-stream.
pub fn unpack(input: impl Read, out: &mut Writer<'_>) -> Result<(), UnpackError> {
    let meter = Meter::new(out.budget().limits());
    let mut archive = tar::Archive::new(Metered {
        inner: input,
        meter: meter.clone(),
    });
    let entries = archive.entries().map_err(|e| meter.error(out, &e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| meter.error(out, &e))?;
        meter.entry(entry.size());
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = entry.path().map_err(|e| out.corrupt(&e))?.into_owned();
        let rel = out.check(&name, &path)?;
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().ok().and_then(mtime_from_secs);
        let kind = header.entry_type();
        match kind {
            EntryType::Directory => out.dir(&name, &rel, mode, mtime)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => out
                .file(&name, &rel, &mut entry, mode, mtime)
                .map_err(|e| meter.or(e))?,
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| out.corrupt(&e))?
                    .ok_or_else(|| out.refuse(&name, "a link without a target"))?
                    .into_owned();
                if kind == EntryType::Symlink {
                    out.symlink(&name, &rel, &target, mtime)?
                } else {
                    out.hardlink(&name, &rel, &target)?
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(out.refuse(&name, "device and fifo entries are not allowed"))
            }
            // Metadata records that `entries()` did not fold into the next entry.
            EntryType::XGlobalHeader | EntryType::XHeader => {}
            other => {
                let why = format!("unsupported entry type {:?}", other.as_byte() as char);
                return Err(out.refuse(&name, why));
            }
        }
    }
    meter.end();
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|e| meter.error(out, &e))?;
    Ok(())
}

/// Which limit the decompressed stream ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exceeded {
    /// More bytes than the content and the headers of `max_entries` entries could take.
    Total,
    /// More bytes between two entries than their headers may take.
    Metadata,
    /// More bytes after the end of the archive than the padding of its last record.
    Trailing,
}

/// Counts the decompressed bytes; shared by the reader inside the tar crate and the loop that
/// tells it where each entry starts (all on the one unpack thread).
#[derive(Debug, Clone)]
struct Meter(Rc<MeterState>);

#[derive(Debug)]
struct MeterState {
    /// `--max-unpacked-size`, for the message.
    max_unpacked_size: u64,
    /// The most the whole stream may hold.
    total: u64,
    read: Cell<u64>,
    /// Where the current window began (the start of the last entry's data), how much it may
    /// hold (that entry's data and padding, then the next entry's headers) and what going past
    /// it means.
    window_start: Cell<u64>,
    window: Cell<u64>,
    window_kind: Cell<Exceeded>,
    exceeded: Cell<Option<Exceeded>>,
}

impl Meter {
    fn new(limits: &Limits) -> Meter {
        let overhead = limits.max_entries.saturating_mul(OVERHEAD_PER_ENTRY);
        Meter(Rc::new(MeterState {
            max_unpacked_size: limits.max_unpacked_size,
            total: limits.max_unpacked_size.saturating_add(overhead),
            read: Cell::new(0),
            window_start: Cell::new(0),
            // The first entry's headers.
            window: Cell::new(MAX_METADATA),
            window_kind: Cell::new(Exceeded::Metadata),
            exceeded: Cell::new(None),
        }))
    }

    /// An entry with `size` bytes of data starts here.
    fn entry(&self, size: u64) {
        self.window(size.saturating_add(512 + MAX_METADATA), Exceeded::Metadata);
    }

    /// The archive ended here: what follows is the zero blocks padding its last record (10 KiB
    /// for GNU tar, at most 1 MiB with `tar -b 2048`).
    fn end(&self) {
        self.window(MAX_METADATA, Exceeded::Trailing);
    }

    fn window(&self, size: u64, kind: Exceeded) {
        let state = &self.0;
        state.window_start.set(state.read.get());
        state.window.set(size);
        state.window_kind.set(kind);
    }

    fn count(&self, n: usize) -> io::Result<()> {
        let state = &self.0;
        let read = state.read.get().saturating_add(n as u64);
        state.read.set(read);
        let exceeded = if read > state.total {
            Exceeded::Total
        } else if read - state.window_start.get() > state.window.get() {
            state.window_kind.get()
        } else {
            return Ok(());
        };
        state.exceeded.set(Some(exceeded));
        Err(io::Error::other("the archive is larger than its limits"))
    }

    /// The error for a failed read: the limit's, when one was hit, else a corrupt archive.
    fn error(&self, out: &Writer<'_>, e: &io::Error) -> UnpackError {
        self.or(out.corrupt(e))
    }

    /// `err`, unless a limit was hit underneath it (the writer sees that as a read error).
    fn or(&self, err: UnpackError) -> UnpackError {
        let url = match &err {
            UnpackError::Corrupt { url, .. } => url.clone(),
            _ => return err,
        };
        let detail = match self.0.exceeded.get() {
            None => return err,
            Some(Exceeded::Total) => {
                return UnpackError::TooLarge {
                    url,
                    limit: Size(self.0.max_unpacked_size),
                }
            }
            Some(Exceeded::Metadata) => format!(
                "a long name or pax record holds more than {}",
                Size(MAX_METADATA)
            ),
            Some(Exceeded::Trailing) => {
                format!("more than {} of data follow its end", Size(MAX_METADATA))
            }
        };
        UnpackError::Corrupt { url, detail }
    }
}

/// The decompressed stream, counted by its [`Meter`].
struct Metered<R> {
    inner: R,
    meter: Meter,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.count(n)?;
        Ok(n)
    }
}
