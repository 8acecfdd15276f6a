//! One deploy per `dest` at a time: an exclusive `flock` on `STATE/locks/<hash of dest>.lock`.
//!
//! flock is released by the kernel when the holder exits, however it exits, so a crashed agent
//! never leaves a stale lock behind. The holder writes its pid into the file so that a waiting
//! agent can say whom it waits for.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::log::RunLog;

/// Held for the whole deploy; dropping it releases the lock.
#[derive(Debug)]
pub struct DestLock {
    _file: Flock<File>,
    pub path: PathBuf,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("could not open lock file {path}: {source}: check that the state directory is writable (--state-dir)")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another cutover{holder} is still deploying to {dest} after {waited:?}: wait for it to finish or raise --lock-timeout")]
    Timeout {
        dest: PathBuf,
        holder: String,
        waited: Duration,
    },
    #[error("could not lock {path}: {errno}")]
    Flock { path: PathBuf, errno: Errno },
}

/// The canonical form of `dest` (resolving symlinks of the part that exists), so that two
/// spellings of one directory share one lock.
pub fn canonical_dest(dest: &Path) -> PathBuf {
    if let Ok(path) = dest.canonicalize() {
        return path;
    }
    match (dest.parent(), dest.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or_else(|_| dest.to_path_buf()),
        _ => dest.to_path_buf(),
    }
}

/// A name for `dest` that every spelling of it shares: the hex SHA-256 of its canonical form. It
/// names the lock file and the staging directories of deploys to `dest`.
pub fn dest_key(dest: &Path) -> String {
    let canonical = canonical_dest(dest);
    hex::encode(Sha256::digest(canonical.as_os_str().as_encoded_bytes()))
}

/// Takes the lock for `dest`, waiting up to `timeout` for another agent to finish.
pub async fn acquire(
    state_dir: &Path,
    dest: &Path,
    timeout: Duration,
    log: &RunLog,
) -> Result<DestLock, LockError> {
    let canonical = canonical_dest(dest);
    let dir = state_dir.join("locks");
    let path = dir.join(format!("{}.lock", &dest_key(dest)[..32]));
    let open_err = |source| LockError::Open {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(open_err)?;
    let start = Instant::now();
    let mut said_waiting = false;
    let mut pause = Duration::from_millis(20);
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(open_err)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut locked) => {
                // Best effort: the pid is only for the message another waiting agent prints.
                let _ = locked.set_len(0);
                let _ = locked.rewind();
                let _ = writeln!(locked, "{}", std::process::id());
                return Ok(DestLock {
                    _file: locked,
                    path,
                });
            }
            Err((_, Errno::EWOULDBLOCK)) => {}
            Err((_, errno)) => return Err(LockError::Flock { path, errno }),
        }
        let holder = holder_pid(&path)
            .map(|pid| format!(" (pid {pid})"))
            .unwrap_or_default();
        if !said_waiting {
            log.line(format!(
                "waiting for another cutover deploying to {}{holder}",
                canonical.display()
            ));
            said_waiting = true;
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(LockError::Timeout {
                dest: canonical,
                holder,
                waited: timeout,
            });
        }
        // flock has no timed wait: poll with a short back-off, bounded by the deadline.
        tokio::time::sleep(pause.min(timeout - waited)).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

fn holder_pid(path: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_lock_on_one_dest_times_out_and_then_succeeds() {
        let state = tempfile::tempdir().expect("tempdir");
        let dest = state.path().join("app");
        let log = RunLog::quiet(1 << 16);
        let held = acquire(state.path(), &dest, Duration::from_secs(1), &log)
            .await
            .expect("first lock");
        let err = acquire(state.path(), &dest, Duration::from_millis(100), &log)
            .await
            .unwrap_err();
        let pid = std::process::id();
        assert!(err.to_string().contains(&format!("(pid {pid})")), "{err}");
        assert!(log.contents().contains("waiting for another cutover"));
        drop(held);
        acquire(state.path(), &dest, Duration::from_secs(1), &log)
            .await
            .expect("lock after release");
    }
}
