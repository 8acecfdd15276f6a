//! An app's access log: one JSON line per HTTP request, appended to a file by a writer thread of
//! its own so that no request ever waits on the disk.
//!
//! Each proxy worker formats its requests' lines into a buffer of its own (a lock only that
//! worker and, once per batch, the writer take); the writer swaps the buffers out whole and
//! appends them. A buffer that is full because the writer fell behind (a slow or full disk)
//! drops the line and counts it; the writer reports what was dropped in the supervisor's log, at
//! most every [`REPORT_EVERY`]. While lines flow the writer appends them in batches, every
//! [`BATCH_PAUSE`]; once it finds nothing it sleeps (parked, no timer) until a worker wakes it.
//!
//! Rotation: the file is opened with `O_APPEND`, so logrotate's `copytruncate` just works (the
//! next line goes to the start of the emptied file); and before every batch the writer checks
//! that the path still names the file it has open, so a file renamed or removed (logrotate's
//! default `create`) is followed by a new one at the path. No signal is needed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::access_line::{format_line, Clock, Line};

/// The most a worker's buffer holds before new lines are dropped (the writer is behind).
const BUFFER_CAP: usize = 512 * 1024;

/// How long the writer lets lines gather between two appends while they flow. A worker's buffer
/// fills in no less than about 80 ms (50,000 lines of 250 bytes a second into 512 KiB), so none
/// is dropped for this pause.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// How often, at most, the writer reports dropped or lost lines.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// One app's access log, shared by the proxy's workers; the writer ends once it is dropped.
#[derive(Debug)]
pub struct AccessLog {
    shared: Arc<Shared>,
    /// The writer thread, woken to write and to end.
    writer: std::thread::Thread,
}

/// What the workers and the writer share.
#[derive(Debug)]
struct Shared {
    app: String,
    path: PathBuf,
    shards: Box<[Shard]>,
    /// The writer has been woken and not yet looked at the buffers: no need to wake it again.
    signalled: AtomicBool,
    /// The log is let go of: the writer writes what is left and ends.
    closed: AtomicBool,
    /// Lines dropped (a full buffer) and lost (a failed write) since the log was opened.
    dropped_total: AtomicU64,
    lost_total: AtomicU64,
}

/// What became of an access log's lines, for `cutover status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineLosses {
    /// Dropped because the writer was behind (a slow or full disk).
    pub dropped: u64,
    /// Lost because a write failed.
    pub lost: u64,
}

/// One worker's buffer, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    batch: Mutex<Batch>,
}

/// The lines a worker wrote since the writer last took them.
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
    dropped: u64,
    clock: Clock,
}

impl AccessLog {
    /// Opens (creating it and its directory if need be) the access log of `app` at `path`, with
    /// a buffer for each of `workers` workers, and starts its writer.
    pub fn open(path: &Path, app: &str, workers: usize) -> std::io::Result<AccessLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = Appender::open(path)?;
        let shared = Arc::new(Shared {
            app: app.to_owned(),
            path: path.to_owned(),
            shards: (0..workers.max(1)).map(|_| Shard::default()).collect(),
            signalled: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            dropped_total: AtomicU64::new(0),
            lost_total: AtomicU64::new(0),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("access-log {app}"))
                .spawn(move || write_until_closed(&shared, file))?
        };
        Ok(AccessLog {
            shared,
            writer: writer.thread().clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The lines dropped and lost since the log was opened.
    pub fn losses(&self) -> LineLosses {
        LineLosses {
            dropped: self.shared.dropped_total.load(Ordering::Relaxed),
            lost: self.shared.lost_total.load(Ordering::Relaxed),
        }
    }

    /// Adds `line` to `worker`'s buffer, or drops it if the buffer is full; never waits for the
    /// disk.
    pub(super) fn write(&self, worker: usize, line: &Line<'_>) {
        let shard = &self.shared.shards[worker % self.shared.shards.len()];
        {
            let mut batch = lock(&shard.batch);
            if batch.bytes.len() >= BUFFER_CAP {
                batch.dropped += 1;
                self.shared.dropped_total.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let batch = &mut *batch;
            format_line(&mut batch.bytes, &mut batch.clock, &self.shared.app, line);
            batch.lines += 1;
        }
        // Read first: while the writer is busy the flag stays set, and reading a cache line no
        // one writes costs nothing.
        if !self.shared.signalled.load(Ordering::SeqCst)
            && !self.shared.signalled.swap(true, Ordering::SeqCst)
        {
            self.writer.unpark();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.writer.unpark();
    }
}

/// The writer thread: takes the workers' buffers whole and appends them, until the log is closed
/// (then once more, for the last lines).
///
/// While lines flow it takes them every [`BATCH_PAUSE`], so a busy proxy pays one write per
/// worker per pause, not one wake-up and one write per request; once a look finds nothing it
/// parks until a worker wakes it (no timer while the app is idle).
fn write_until_closed(shared: &Shared, mut file: Appender) {
    let mut spare: Vec<u8> = Vec::new();
    let mut report = Report::default();
    loop {
        let closing = shared.closed.load(Ordering::SeqCst);
        let wrote = take_and_append(shared, &mut file, &mut spare, &mut report);
        report.now_and_then(shared, closing);
        if closing {
            return;
        }
        if wrote {
            // `signalled` stays set: the workers add to their buffers without waking anyone.
            std::thread::sleep(BATCH_PAUSE);
            continue;
        }
        // Cleared before the buffers are looked at once more: a line added after this wakes
        // the writer again, and one added before it is found by this look.
        shared.signalled.store(false, Ordering::SeqCst);
        if !take_and_append(shared, &mut file, &mut spare, &mut report) {
            std::thread::park();
        }
    }
}

/// Appends what each worker's buffer holds; says whether there was anything.
fn take_and_append(
    shared: &Shared,
    file: &mut Appender,
    spare: &mut Vec<u8>,
    report: &mut Report,
) -> bool {
    let mut wrote = false;
    for shard in shared.shards.iter() {
        let lines = {
            let mut batch = lock(&shard.batch);
            report.dropped += std::mem::take(&mut batch.dropped);
            if batch.bytes.is_empty() {
                continue;
            }
            std::mem::swap(&mut batch.bytes, spare);
            std::mem::take(&mut batch.lines)
        };
        wrote = true;
        if let Err(err) = file.append(spare) {
            shared.lost_total.fetch_add(lines, Ordering::Relaxed);
            report.lost += lines;
            report.error = Some(err.to_string());
        }
        spare.clear();
    }
    wrote
}

/// The file at a path, opened for appending, reopened when the path names another file.
struct Appender {
    path: PathBuf,
    file: File,
    /// The open file's device and inode.
    id: (u64, u64),
}

impl Appender {
    fn open(path: &Path) -> std::io::Result<Appender> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let meta = file.metadata()?;
        Ok(Appender {
            path: path.to_owned(),
            file,
            id: (meta.dev(), meta.ino()),
        })
    }

    /// Appends `bytes` in one write; first reopens the path if the file was renamed or removed.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let same = std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if !same {
            *self = Appender::open(&self.path)?;
        }
        self.file.write_all(bytes)
    }
}

/// Lines dropped (the writer behind) or lost (a write failed) since the last report.
#[derive(Debug, Default)]
struct Report {
    dropped: u64,
    lost: u64,
    error: Option<String>,
    last: Option<Instant>,
}

impl Report {
    /// Says what was dropped or lost, at most every `REPORT_EVERY` (and at the end).
    fn now_and_then(&mut self, shared: &Shared, last_chance: bool) {
        if self.dropped == 0 && self.lost == 0 {
            return;
        }
        if !last_chance && self.last.is_some_and(|at| at.elapsed() < REPORT_EVERY) {
            return;
        }
        let (app, path) = (&shared.app, shared.path.display());
        if self.dropped > 0 {
            tracing::warn!(
                app = %app,
                dropped = self.dropped,
                "access log {path}: dropped {} line(s): its writer fell behind (a slow or full disk?); no request waited for it",
                self.dropped
            );
        }
        if let Some(error) = self.error.take() {
            tracing::warn!(
                app = %app,
                lost = self.lost,
                "access log {path}: lost {} line(s): {error}; check the disk and the file's permissions",
                self.lost
            );
        }
        self.dropped = 0;
        self.lost = 0;
        self.last = Some(Instant::now());
    }
}

/// A buffer lock: a panic while holding it leaves plain bytes behind, still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::proxy::access_line::tests::line;

    #[test]
    fn lines_reach_the_file_and_follow_it_when_renamed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("logs/shop/access.log");
        let log = AccessLog::open(&path, "shop", 2).expect("open");
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        let wait_lines = |path: &Path, n: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while read(path).lines().count() < n {
                assert!(Instant::now() < deadline, "{n} lines in {path:?}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        log.write(0, &line("/one"));
        log.write(1, &line("/two"));
        wait_lines(&path, 2);
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        log.write(0, &line("/three"));
        wait_lines(&path, 1);
        assert!(read(&path).contains("/three"));
        assert_eq!(read(&rotated).lines().count(), 2);
        drop(log);
    }
}
