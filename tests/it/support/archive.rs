//! Build test archives (tar, tar.gz, xz, bz2, zstd, zip) and hostile ones, in memory or on disk.

use std::io::Write;

use digest::Digest;

/// The mtime every sample entry carries, so tests can check it survived.
pub const MTIME: u64 = 1_600_000_000;

/// Compression wrappers around a tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Bzip2,
    Zstd,
}

pub const ALL_COMPRESSIONS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Xz,
    Compression::Bzip2,
    Compression::Zstd,
];

/// A header with the sample's defaults.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// A tar with a `./` entry (0750), a directory, a text file, an executable, a symlink, a hard
/// link and `extra` bytes of random data in `data/blob`.
pub fn sample_tar(extra: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let dirs = [("./", 0o750), ("./app/", 0o755), ("./app/bin/", 0o755)];
    for (path, mode) in dirs {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    }
    let files: [(&str, u32, Vec<u8>); 3] = [
        (
            "./app/hello.txt",
            0o640,
            b"hello from the archive\n".to_vec(),
        ),
        ("./app/bin/run", 0o755, b"#!/bin/sh\necho run\n".to_vec()),
        ("./app/data/blob", 0o644, random_bytes(extra, 7)),
    ];
    for (path, mode, body) in files {
        let mut h = header(tar::EntryType::Regular, mode, body.len() as u64);
        b.append_data(&mut h, path, body.as_slice()).unwrap();
    }
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "./app/current.txt", "hello.txt")
        .unwrap();
    let mut h = header(tar::EntryType::Link, 0o640, 0);
    b.append_link(&mut h, "./app/hard.txt", "./app/hello.txt")
        .unwrap();
    b.into_inner().unwrap()
}

/// `tar` wrapped in `compression`.
pub fn compress(tar: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Xz => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(tar, 1).unwrap(),
    }
}

/// A zip with a directory, a text file and an executable.
pub fn sample_zip() -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = |mode| {
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode)
    };
    z.add_directory("app/", opts(0o755)).unwrap();
    z.start_file("app/hello.txt", opts(0o640)).unwrap();
    z.write_all(b"hello from the zip\n").unwrap();
    z.start_file("app/bin/run", opts(0o755)).unwrap();
    z.write_all(b"#!/bin/sh\n").unwrap();
    z.finish().unwrap().into_inner()
}

/// Archives that must be refused (or, for `Setuid`, defused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// `../evil`
    ParentDir,
    /// `/tmp/evil-absolute`
    Absolute,
    /// `link -> ../../etc`
    SymlinkEscape,
    /// `hard` hard-linked to `../../etc/passwd`
    HardlinkEscape,
    /// a character device `dev/null2`
    CharDevice,
    /// `fifo`
    Fifo,
    /// `suid` with mode 04755: unpacked as 0755
    Setuid,
}

impl Hostile {
    /// The entry name the refusal must quote.
    pub fn entry(self) -> &'static str {
        match self {
            Hostile::ParentDir => "../evil",
            Hostile::Absolute => "/tmp/evil-absolute",
            Hostile::SymlinkEscape => "link",
            Hostile::HardlinkEscape => "hard",
            Hostile::CharDevice => "dev/null2",
            Hostile::Fifo => "fifo",
            Hostile::Setuid => "suid",
        }
    }
}

/// A tar holding one harmless file, then the hostile entry. Names and link targets are written
/// into the raw header because `tar::Builder` (rightly) refuses to build such paths.
pub fn hostile_tar(kind: Hostile) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Regular, 0o644, 3);
    b.append_data(&mut h, "ok.txt", &b"ok\n"[..]).unwrap();
    let (entry_type, mode, link, body): (_, _, Option<&str>, &[u8]) = match kind {
        Hostile::ParentDir | Hostile::Absolute => (tar::EntryType::Regular, 0o644, None, b"evil\n"),
        Hostile::SymlinkEscape => (tar::EntryType::Symlink, 0o777, Some("../../etc"), b""),
        Hostile::HardlinkEscape => (tar::EntryType::Link, 0o644, Some("../../etc/passwd"), b""),
        Hostile::CharDevice => (tar::EntryType::Char, 0o666, None, b""),
        Hostile::Fifo => (tar::EntryType::Fifo, 0o644, None, b""),
        Hostile::Setuid => (tar::EntryType::Regular, 0o4755, None, b"#!/bin/sh\n"),
    };
    let mut h = header(entry_type, mode, body.len() as u64);
    {
        let raw = h.as_old_mut();
        raw.name = [0; 100];
        raw.name[..kind.entry().len()].copy_from_slice(kind.entry().as_bytes());
        if let Some(link) = link {
            raw.linkname = [0; 100];
            raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
    }
    if kind == Hostile::CharDevice {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    b.append(&h, body).unwrap();
    b.into_inner().unwrap()
}

/// Deterministic incompressible bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64*: fast and good enough to defeat compression.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

pub fn sha512_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha512::digest(data))
}

pub fn sha1_hex(data: &[u8]) -> String {
    hex::encode(sha1::Sha1::digest(data))
}

pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(md5::Md5::digest(data))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A tar.gz holding one file of `size` zeros (a whole number of MiB) in about 1 KB per MiB:
/// gzip members are concatenated, one compressed MiB repeated, so building it costs nothing.
pub fn gzip_bomb_tar(size: u64) -> Vec<u8> {
    assert_eq!(size % (1 << 20), 0, "a whole number of MiB");
    let mut h = header(tar::EntryType::Regular, 0o644, size);
    h.set_path("zeros").unwrap();
    h.set_cksum();
    let mut out = gzip(h.as_bytes());
    let mib = gzip(&vec![0; 1 << 20]);
    for _ in 0..size >> 20 {
        out.extend_from_slice(&mib);
    }
    // The end of the archive: two zero blocks.
    out.extend_from_slice(&gzip(&[0; 1024]));
    out
}

/// A zip holding one deflated file of `size` zeros.
pub fn zip_bomb(size: usize) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    z.start_file("zeros", opts).unwrap();
    let mib = vec![0; 1 << 20];
    for _ in 0..size >> 20 {
        z.write_all(&mib).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// A tar.gz of `n` empty files named `{prefix}f{i}` (`prefix` may be a directory path).
pub fn many_files_tar_gz(n: usize, prefix: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for i in 0..n {
        let mut h = header(tar::EntryType::Regular, 0o644, 0);
        b.append_data(&mut h, format!("{prefix}f{i}"), std::io::empty())
            .unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// The header of a tar holding one file of 1 TiB, for a body that never ends.
pub fn endless_tar_head() -> Vec<u8> {
    let mut h = header(tar::EntryType::Regular, 0o644, 1 << 40);
    h.set_path("endless").unwrap();
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// A gzip member of `endless_tar_head`, and one of a MiB of zeros to repeat after it: a
/// tar.gz that unpacks a MiB for every KB downloaded, for as long as it is sent.
pub fn endless_gzip_bomb() -> (Vec<u8>, Vec<u8>) {
    (gzip(&endless_tar_head()), gzip(&vec![0; 1 << 20]))
}
