//! Unpacking an archive as it streams in: the format is told by its magic bytes (as `tar xf`
//! does), the bytes are decompressed and every entry is checked before it is written, so a
//! hostile archive cannot write outside the staging directory.
//!
//! This runs on a blocking thread fed by [`Feed`]; the async side hashes the same bytes, so
//! hashing and decompression use two cores. The feed only reports end-of-stream after the
//! checksum matched ([`Msg::Verified`]): an unpack can therefore only succeed on verified bytes,
//! and a zip (which needs the whole file) is only opened once its digest is known to be right.

mod budget;
mod entries;
mod tar;
mod zip;

use std::fmt;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

use super::limits::{Limits, Size};

/// The formats cutover recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Tar,
    TarGz,
    TarXz,
    TarBz2,
    TarZst,
    Zip,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Tar => "tar",
            Format::TarGz => "tar.gz",
            Format::TarXz => "tar.xz",
            Format::TarBz2 => "tar.bz2",
            Format::TarZst => "tar.zst",
            Format::Zip => "zip",
        })
    }
}

/// What an unpack produced.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub format: Format,
    /// Entries written (files, directories, links, and the directories their paths imply).
    pub entries: u64,
    /// Permission bits of the archive's own `./` entry, if it has one (setuid & co dropped).
    pub root_mode: Option<u32>,
}

/// Why an unpack failed; `url` names the archive.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("refusing archive entry '{entry}' of {url}: {why}; the archive is hostile or broken, rebuild it")]
    Refused {
        url: String,
        entry: String,
        why: String,
    },
    #[error("archive {url} is truncated or corrupt: {detail}; check the upload and the checksum")]
    Corrupt { url: String, detail: String },
    #[error("archive {url} is empty; check the upload")]
    Empty { url: String },
    #[error("{url} is not a known archive format (first bytes: {first}); expected tar, tar.gz, tar.xz, tar.bz2, tar.zst or zip")]
    UnknownFormat { url: String, first: String },
    #[error("could not write {} while unpacking {url}: {source}; check free space and permissions", path.display())]
    Write {
        url: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("archive {url} unpacks to more than {limit}: if the release is really that large, raise --max-unpacked-size (CUTOVER_MAX_UNPACKED_SIZE)")]
    TooLarge { url: String, limit: Size },
    #[error("archive {url} has more than {limit} entries (directories included): if the release really has that many files, raise --max-entries (CUTOVER_MAX_ENTRIES)")]
    TooManyEntries { url: String, limit: u64 },
    #[error("unpacking {url} would leave less than {reserve} free on the filesystem of {} ({free} free): free some space there, or lower --min-free-space (CUTOVER_MIN_FREE_SPACE)", dir.display())]
    LowSpace {
        url: String,
        dir: PathBuf,
        free: Size,
        reserve: Size,
    },
    #[error("unpacking {url} would leave fewer than {reserve} free inodes on the filesystem of {} ({free} free): delete some files there, or lower --min-free-inodes (CUTOVER_MIN_FREE_INODES)", dir.display())]
    LowInodes {
        url: String,
        dir: PathBuf,
        free: u64,
        reserve: u64,
    },
}

/// A message from the async side to the unpack thread.
#[derive(Debug)]
pub enum Msg {
    Data(Bytes),
    /// All bytes were sent and their digest matched: the feed may now report end-of-stream.
    Verified,
}

/// The blocking reader over the channel of chunks.
#[derive(Debug)]
pub struct Feed {
    rx: mpsc::Receiver<Msg>,
    current: Bytes,
    verified: bool,
}

impl Feed {
    pub fn new(rx: mpsc::Receiver<Msg>) -> Feed {
        Feed {
            rx,
            current: Bytes::new(),
            verified: false,
        }
    }
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.verified {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(chunk)) => self.current = chunk,
                Some(Msg::Verified) => self.verified = true,
                // The sender went away without vouching for the bytes: a failed checksum, a
                // timeout or a restart. Whatever was unpacked is about to be deleted.
                None => return Err(io::Error::other("the download was abandoned")),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// How many leading bytes format detection looks at (a tar header is 512 bytes).
const SNIFF: u64 = 512;

/// Unpacks the archive read from `input` into `root` (an existing, empty directory), within
/// `limits`.
pub fn unpack(
    input: impl Read,
    root: &Path,
    url: &str,
    limits: Limits,
) -> Result<Unpacked, UnpackError> {
    let mut out = entries::Writer::new(root, url, budget::Budget::new(limits, root, url)?);
    let mut input = input;
    let mut head = Vec::with_capacity(SNIFF as usize);
    (&mut input)
        .take(SNIFF)
        .read_to_end(&mut head)
        .map_err(|e| corrupt(url, &e))?;
    if head.is_empty() {
        return Err(UnpackError::Empty {
            url: url.to_owned(),
        });
    }
    let format = detect(&head).ok_or_else(|| UnpackError::UnknownFormat {
        url: url.to_owned(),
        first: describe(&head),
    })?;
    let stream = Read::chain(Cursor::new(head), input);
    match format {
        Format::Tar => tar::unpack(stream, &mut out)?,
        Format::TarGz => tar::unpack(flate2::read::MultiGzDecoder::new(stream), &mut out)?,
        Format::TarXz => tar::unpack(xz2::read::XzDecoder::new_multi_decoder(stream), &mut out)?,
        Format::TarBz2 => tar::unpack(bzip2::read::MultiBzDecoder::new(stream), &mut out)?,
        Format::TarZst => {
            let decoder = zstd::stream::read::Decoder::new(stream).map_err(|e| corrupt(url, &e))?;
            tar::unpack(decoder, &mut out)?
        }
        Format::Zip => zip::unpack(stream, &mut out)?,
    };
    let (entries, root_mode) = out.finish()?;
    Ok(Unpacked {
        format,
        entries,
        root_mode,
    })
}

/// The format announced by the first bytes.
pub fn detect(head: &[u8]) -> Option<Format> {
    const MAGIC: [(&[u8], Format); 6] = [
        (&[0x1f, 0x8b], Format::TarGz),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Format::TarXz),
        (b"BZh", Format::TarBz2),
        (&[0x28, 0xb5, 0x2f, 0xfd], Format::TarZst),
        (b"PK\x03\x04", Format::Zip),
        (b"PK\x05\x06", Format::Zip),
    ];
    if let Some((_, format)) = MAGIC.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Some(*format);
    }
    is_tar_header(head).then_some(Format::Tar)
}

/// A POSIX/GNU tar starts with "ustar" at 257; an old v7 tar only has a valid header checksum.
fn is_tar_header(head: &[u8]) -> bool {
    if head.len() < 512 {
        return false;
    }
    if &head[257..262] == b"ustar" {
        return true;
    }
    let stored = std::str::from_utf8(&head[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    // The checksum is the byte sum of the header with its own field read as spaces.
    let sum: u32 = head[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    stored == Some(sum)
}

/// The first bytes as hex and as text, for the "unknown format" message.
fn describe(head: &[u8]) -> String {
    let head = &head[..head.len().min(16)];
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
    let text: String = head
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    format!("{} \"{text}\"", hex.join(" "))
}

fn corrupt(url: &str, e: &dyn fmt::Display) -> UnpackError {
    UnpackError::Corrupt {
        url: url.to_owned(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compressed_formats_by_magic() {
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Some(Format::TarGz));
        assert_eq!(detect(b"\xfd7zXZ\x00rest"), Some(Format::TarXz));
        assert_eq!(detect(b"BZh91AY"), Some(Format::TarBz2));
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Some(Format::TarZst));
        assert_eq!(detect(b"PK\x03\x04...."), Some(Format::Zip));
        assert_eq!(detect(b"<html><body>Not Found"), None);
    }

    #[test]
    fn describes_unknown_bytes_readably() {
        assert_eq!(describe(b"<h\x01"), "3c 68 01 \"<h.\"");
    }
}
