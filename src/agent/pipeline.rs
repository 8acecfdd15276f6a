//! The one streaming pass: fetch `src`, hash the bytes as they arrive and unpack them at the same
//! time into a staging directory beside `dest`; nothing reaches `dest` before the digest matched.
//!
//! Two workers share the bytes: this async task throttles and hashes each chunk, then hands it
//! over a small bounded channel to a blocking thread that decompresses and writes ([`unpack`]).
//! Memory stays bounded by the channel whatever the archive size. A transfer broken mid-stream
//! resumes at the byte it reached when the origin honours a range request; otherwise the
//! staging directory and the hasher start over. Whatever fails, the staging directory is
//! removed only after its unpack thread has stopped, so no stray write can recreate it.
//!
//! [`Limits`] bound both sides: the download stops at `max_src_size` (a `src` that never ends
//! fails instead of running forever), the unpack at its own limits and reserves.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::checksum::{Algorithm, Checksum, Hasher};
use super::limits::{Limits, Size};
use super::log::RunLog;
use super::source::throttle::Throttle;
use super::source::{self, Attempts, FetchError, FetchOptions, Fetcher};
use super::unpack::{self, Feed, Format, Msg, UnpackError, Unpacked};

/// Prefix of staging directories, so an operator can tell leftovers of a crash (`leftovers`
/// names them after their dest and sweeps them).
pub const STAGING_PREFIX: &str = ".cutover-staging-";

/// Chunks in flight between the hasher and the unpack thread (each at most a few hundred KB).
const CHANNEL_CHUNKS: usize = 16;

/// A verified, unpacked release waiting in its staging directory (removed on drop).
#[derive(Debug)]
pub struct Staged {
    /// The staging directory; the unpacked tree is its content.
    pub dir: tempfile::TempDir,
    /// Lowercase hex digest of the compressed bytes (matches the manifest's checksum).
    pub digest_hex: String,
    /// Number of compressed bytes fetched.
    pub bytes: u64,
    /// The archive format that was recognised.
    pub format: Format,
    /// Permission bits of the archive's `./` entry, if any; the agent's `dest_mode` wins.
    pub root_mode: Option<u32>,
}

impl Staged {
    /// The unpacked tree.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Why the fetch-verify-unpack pass failed; one line that says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("checksum mismatch for {url}: expected {algorithm} {expected}, got {got}; the archive or the manifest is wrong")]
    ChecksumMismatch {
        url: String,
        algorithm: Algorithm,
        expected: String,
        got: String,
    },
    #[error("could not create a staging directory in {}: {source}; check that it exists, is writable and has free space", parent.display())]
    Staging {
        parent: PathBuf,
        source: std::io::Error,
    },
    #[error("the unpack thread for {url} stopped unexpectedly: {detail}; this is a bug in cutover, please report it")]
    Worker { url: String, detail: String },
    #[error("{url} is larger than {limit}: if the archive is really that large, raise --max-src-size (CUTOVER_MAX_SRC_SIZE), else check the URL")]
    SrcTooLarge { url: String, limit: Size },
}

/// Fetches `src`, verifies it against `checksum` and unpacks it into a new staging directory
/// created inside `staging_parent` (which must be on the same filesystem as `dest`) with a name
/// that starts with `prefix` (`STAGING_PREFIX`, or `leftovers::staging_prefix`), within `limits`.
pub async fn fetch_and_unpack(
    src: &str,
    checksum: &Checksum,
    (staging_parent, prefix): (&Path, &str),
    opts: &FetchOptions,
    limits: &Limits,
    log: &RunLog,
) -> Result<Staged, PipelineError> {
    let mut job = Job {
        url: src,
        checksum,
        parent: staging_parent,
        prefix,
        limits: *limits,
        fetcher: Fetcher::new(src, opts)?,
        stage: Some(Stage::start((staging_parent, prefix), src, *limits)?),
        retired: Vec::new(),
        hasher: checksum.hasher(),
        offset: 0,
        throttle: opts.max_bandwidth.map(Throttle::new),
        progress: progress_bar(opts.progress),
    };
    let result = job.run(opts, log).await;
    job.progress.finish_and_clear();
    // Every path out, success included, waits for abandoned unpack threads before their
    // staging directories go.
    job.cleanup().await;
    result
}

/// One pass: the source, the digest so far, and the stage being filled.
struct Job<'a> {
    url: &'a str,
    checksum: &'a Checksum,
    parent: &'a Path,
    prefix: &'a str,
    limits: Limits,
    fetcher: Fetcher,
    /// `None` once handed over (finished) or abandoned.
    stage: Option<Stage>,
    /// Stages given up after an origin ignored a range request; cleaned up at the end.
    retired: Vec<Stage>,
    hasher: Hasher,
    /// Bytes hashed and handed to the unpack thread so far.
    offset: u64,
    throttle: Option<Throttle>,
    progress: ProgressBar,
}

impl Job<'_> {
    async fn run(&mut self, opts: &FetchOptions, log: &RunLog) -> Result<Staged, PipelineError> {
        let started = Instant::now();
        match source::until(source::deadline(opts), self.transfer(opts, log)).await {
            Some(result) => result?,
            None => {
                return Err(FetchError::TimedOut {
                    url: self.url.to_owned(),
                    after: opts.timeout.unwrap_or_default(),
                }
                .into())
            }
        }
        let took = started.elapsed();
        let hasher = std::mem::replace(&mut self.hasher, self.checksum.hasher());
        let digest = hasher.finish();
        if digest != self.checksum.digest {
            return Err(PipelineError::ChecksumMismatch {
                url: self.url.to_owned(),
                algorithm: self.checksum.algorithm,
                expected: self.checksum.to_hex(),
                got: hex::encode(&digest),
            });
        }
        log.line(format!(
            "fetched {} in {}, {} ok",
            human_bytes(self.offset),
            human_duration(took),
            self.checksum.algorithm
        ));
        let stage = self.stage.take().ok_or_else(|| self.lost_stage())?;
        let (dir, unpacked) = stage.finish(self.url).await?;
        log.line(format!(
            "unpacked {} ({} entries) into {}",
            unpacked.format,
            unpacked.entries,
            dir.path().display()
        ));
        Ok(Staged {
            dir,
            digest_hex: hex::encode(digest),
            bytes: self.offset,
            format: unpacked.format,
            root_mode: unpacked.root_mode,
        })
    }

    /// Attempts until the whole object went through, or the retry budget is spent.
    async fn transfer(&mut self, opts: &FetchOptions, log: &RunLog) -> Result<(), PipelineError> {
        let mut attempts = Attempts::new(self.url, opts, log);
        loop {
            attempts.begin();
            match self.attempt(log).await {
                Ok(()) => return Ok(()),
                Err(PipelineError::Fetch(err)) => {
                    if !attempts.retry_after(&err).await {
                        return Err(err.into());
                    }
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Opens the source at the current offset and pumps it through hasher and unpacker.
    async fn attempt(&mut self, log: &RunLog) -> Result<(), PipelineError> {
        let mut opened = self.fetcher.open(self.offset).await?;
        if self.offset > 0 {
            if opened.resumed {
                log.line(format!("resuming {} at byte {}", self.url, self.offset));
            } else {
                log.line(format!(
                    "{} ignored the range request; starting over from the first byte",
                    self.url
                ));
                self.restart()?;
            }
        }
        if let Some(total) = opened.total {
            // An origin that announces too much is refused before a byte is unpacked.
            if total > self.limits.max_src_size {
                return Err(self.too_large());
            }
            self.progress.set_length(total);
        }
        while let Some(chunk) = opened.stream.next().await {
            let chunk = chunk?;
            if self.offset + chunk.len() as u64 > self.limits.max_src_size {
                return Err(self.too_large());
            }
            if let Some(throttle) = &mut self.throttle {
                throttle.take(chunk.len()).await;
            }
            self.hasher.update(&chunk);
            self.offset += chunk.len() as u64;
            self.progress.set_position(self.offset);
            let stage = self.stage.as_ref().ok_or_else(|| self.lost_stage())?;
            if stage.tx.send(Msg::Data(chunk)).await.is_err() {
                // The unpack thread only hangs up when it failed: report its error.
                return Err(self.unpack_failure().await);
            }
        }
        Ok(())
    }

    fn too_large(&self) -> PipelineError {
        PipelineError::SrcTooLarge {
            url: self.url.to_owned(),
            limit: Size(self.limits.max_src_size),
        }
    }

    /// Starts over with a fresh staging directory and hasher; the old stage is retired.
    fn restart(&mut self) -> Result<(), PipelineError> {
        let fresh = Stage::start((self.parent, self.prefix), self.url, self.limits)?;
        if let Some(old) = self.stage.replace(fresh) {
            self.retired.push(old);
        }
        self.hasher = self.checksum.hasher();
        self.offset = 0;
        Ok(())
    }

    async fn unpack_failure(&mut self) -> PipelineError {
        let Some(stage) = self.stage.take() else {
            return self.lost_stage();
        };
        match stage.finish(self.url).await {
            Err(err) => err,
            Ok(_) => self.lost_stage(),
        }
    }

    fn lost_stage(&self) -> PipelineError {
        PipelineError::Worker {
            url: self.url.to_owned(),
            detail: "the unpack stage ended before the download did".to_owned(),
        }
    }

    async fn cleanup(&mut self) {
        for stage in self.stage.take().into_iter().chain(self.retired.drain(..)) {
            stage.abandon().await;
        }
    }
}

/// A staging directory and the thread unpacking into it.
struct Stage {
    dir: tempfile::TempDir,
    tx: mpsc::Sender<Msg>,
    worker: JoinHandle<Result<Unpacked, UnpackError>>,
}

impl Stage {
    fn start(
        (parent, prefix): (&Path, &str),
        url: &str,
        limits: Limits,
    ) -> Result<Stage, PipelineError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .map_err(|source| PipelineError::Staging {
                parent: parent.to_owned(),
                source,
            })?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let root = dir.path().to_owned();
        let url = url.to_owned();
        let worker =
            tokio::task::spawn_blocking(move || unpack::unpack(Feed::new(rx), &root, &url, limits));
        Ok(Stage { dir, tx, worker })
    }

    /// Vouches for the bytes sent, waits for the unpack and applies the root's mode.
    async fn finish(self, url: &str) -> Result<(tempfile::TempDir, Unpacked), PipelineError> {
        // A send error means the thread already stopped; its result says why.
        let _ = self.tx.send(Msg::Verified).await;
        drop(self.tx);
        let unpacked = match self.worker.await {
            Ok(result) => result?,
            Err(e) => {
                return Err(PipelineError::Worker {
                    url: url.to_owned(),
                    detail: e.to_string(),
                })
            }
        };
        // The staging directory was private while it filled; it now takes the archive's own
        // `./` mode, or the usual 0755 (the agent applies `dest_mode` over either).
        let mode = unpacked.root_mode.unwrap_or(0o755);
        set_mode(self.dir.path(), mode).map_err(|source| UnpackError::Write {
            url: url.to_owned(),
            path: self.dir.path().to_owned(),
            source,
        })?;
        Ok((self.dir, unpacked))
    }

    /// Stops the unpack thread, then deletes the staging directory.
    async fn abandon(self) {
        drop(self.tx);
        let _ = self.worker.await;
        drop(self.dir);
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn progress_bar(enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// "12.3 MB" (decimal units, as download sizes are usually quoted).
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} bytes");
    }
    let mut value = n as f64;
    let mut unit = "";
    for u in UNITS {
        value /= 1000.0;
        unit = u;
        if value < 1000.0 {
            break;
        }
    }
    format!("{value:.1} {unit}")
}

fn human_duration(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_a_download_dialog() {
        assert_eq!(human_bytes(999), "999 bytes");
        assert_eq!(human_bytes(12_345_678), "12.3 MB");
        assert_eq!(human_bytes(2_000_000_000), "2.0 GB");
    }
}
