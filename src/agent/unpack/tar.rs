//! The tar entry loop: every entry is judged by [`Writer`] before anything is written, instead
//! of trusting `tar::Archive::unpack`, which would happily create devices or setuid files.

use std::io::{self, Read};

use tar::EntryType;

use super::entries::{mtime_from_secs, Writer};
use super::UnpackError;

/// Unpacks a (decompressed) tar stream, then reads it to the end so that a compressed
/// stream's trailer (gzip's CRC, xz's index) is checked and the feed reaches end-of-stream.
pub fn unpack(input: impl Read, out: &mut Writer<'_>) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().map_err(|e| out.corrupt(&e))? {
        let mut entry = entry.map_err(|e| out.corrupt(&e))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = entry.path().map_err(|e| out.corrupt(&e))?.into_owned();
        let rel = out.check(&name, &path)?;
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().ok().and_then(mtime_from_secs);
        let kind = header.entry_type();
        match kind {
            EntryType::Directory => out.dir(&rel, mode, mtime)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                out.file(&name, &rel, &mut entry, mode, mtime)?
            }
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
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|e| out.corrupt(&e))?;
    Ok(())
}
