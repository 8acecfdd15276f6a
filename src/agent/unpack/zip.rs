//! Zip archives: the format keeps its directory at the end, so the stream is spooled to an
//! unnamed temp file beside the staging root (same filesystem, gone when closed), then read.
//!
//! The spool reaches its end only once the checksum matched (see [`super::Feed`]), so the zip
//! directory of an unverified download is never parsed. Its bytes take disk space, so the
//! budget's free-space checks count them; the pipeline bounds their number (`--max-src-size`).

use std::io::{self, Read, Seek};
use std::path::Path;

use super::entries::Writer;
use super::UnpackError;

/// The longest symlink target accepted, as Linux's `PATH_MAX`.
const MAX_LINK: u64 = 4096;

pub fn unpack(mut input: impl Read, out: &mut Writer<'_>) -> Result<(), UnpackError> {
    let spool_dir = out.spool_dir().to_owned();
    let url = out.url().to_owned();
    let write_error = |source: io::Error| UnpackError::Write {
        url: url.clone(),
        path: spool_dir.clone(),
        source,
    };
    let mut spool = tempfile::tempfile_in(&spool_dir).map_err(write_error)?;
    copy(&mut input, &mut spool, out)?;
    spool.rewind().map_err(write_error)?;
    let mut zip = zip::ZipArchive::new(spool).map_err(|e| out.corrupt(&e))?;
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).map_err(|e| out.corrupt(&e))?;
        let name = file.name().to_owned();
        let rel = out.check(&name, Path::new(&name))?;
        let mtime = None; // zip's DOS timestamps have no zone; files get the unpack time
        if file.is_dir() {
            out.dir(&name, &rel, file.unix_mode().unwrap_or(0o755), mtime)?;
        } else if file.is_symlink() {
            let mut target = String::new();
            (&mut file)
                .take(MAX_LINK)
                .read_to_string(&mut target)
                .map_err(|e| out.corrupt(&e))?;
            out.symlink(&name, &rel, Path::new(&target), mtime)?;
        } else {
            let mode = file.unix_mode().unwrap_or(0o644);
            out.file(&name, &rel, &mut file, mode, mtime)?;
        }
    }
    Ok(())
}

/// Copies the stream to the spool, telling a broken download from a full disk.
fn copy(
    input: &mut impl Read,
    spool: &mut std::fs::File,
    out: &mut Writer<'_>,
) -> Result<(), UnpackError> {
    let mut buf = vec![0; 256 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(out.corrupt(&e)),
        };
        out.budget().spooled(n as u64)?;
        io::Write::write_all(spool, &buf[..n]).map_err(|source| UnpackError::Write {
            url: out.url().to_owned(),
            path: out.spool_dir().to_owned(),
            source,
        })?;
    }
}
