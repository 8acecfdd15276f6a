//! The manifest's shell hooks: `pre`/`post` with their output kept in the run log, and
//! `success`/`failure` with the whole log on their stdin, as stretcher runs them.
//!
//! Every line runs as `sh -c LINE` in the directory the agent was started in (never a staging
//! directory that may be gone by then), one after another, stopping at the first failure.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::log::{Echo, RunLog};

/// How long output is still collected after a hook exited (see [`wait_relaying`]).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Longest piece of a hook's output kept as one log line when it never prints a newline.
const MAX_LINE: usize = 64 * 1024;

/// Which hook list is running; its name appears in every message about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pre,
    Post,
    Success,
    Failure,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
            Phase::Success => "success",
            Phase::Failure => "failure",
        })
    }
}

/// Why a hook list stopped.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{phase} command `{line}` failed ({status})")]
    Failed {
        phase: Phase,
        line: String,
        status: ExitStatus,
    },
    #[error("{phase} command `{line}` could not start: {source}: is sh installed and the start directory still there?")]
    Spawn {
        phase: Phase,
        line: String,
        #[source]
        source: std::io::Error,
    },
}

fn shell(line: &str, cwd: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(line).current_dir(cwd);
    // A hook that outlives a cancelled run must not keep running unseen.
    cmd.kill_on_drop(true);
    cmd
}

/// Runs a `pre` or `post` list: stdin empty, stdout and stderr echoed to the agent's stderr and
/// kept in the log.
pub async fn run_logged(
    phase: Phase,
    lines: &[String],
    cwd: &Path,
    log: &RunLog,
) -> Result<(), HookError> {
    for line in lines {
        log.line(format!("running {phase} command: {line}"));
        let spawn_err = |source| HookError::Spawn {
            phase,
            line: line.clone(),
            source,
        };
        let mut child = shell(line, cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let what = format!("{phase} command `{line}`");
        let status = wait_relaying(&mut child, &what, log)
            .await
            .map_err(spawn_err)?;
        if !status.success() {
            return Err(HookError::Failed {
                phase,
                line: line.clone(),
                status,
            });
        }
    }
    Ok(())
}

/// Waits for `child` while relaying its stdout and stderr (both at once: a child filling one pipe
/// while we read the other would hang). When the child has exited but something it started in
/// the background (`./server &`) still holds the pipes open, the rest of the output is collected
/// for a short grace period only: the deploy must not wait for a daemon to exit.
pub(super) async fn wait_relaying(
    child: &mut Child,
    what: &str,
    log: &RunLog,
) -> std::io::Result<ExitStatus> {
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let mut relays = std::pin::pin!(async {
        tokio::join!(relay(stdout, what, log), relay(stderr, what, log));
    });
    let mut relayed = false;
    let status = tokio::select! {
        status = child.wait() => status?,
        () = &mut relays => {
            relayed = true;
            child.wait().await?
        }
    };
    if !relayed
        && tokio::time::timeout(OUTPUT_GRACE, &mut relays)
            .await
            .is_err()
    {
        log.line(format!(
            "{what} exited but left a background process holding its output: not waiting for it"
        ));
    }
    Ok(status)
}

/// Copies a child's pipe to the agent's stderr and into the log, one line at a time.
async fn relay(pipe: Option<impl AsyncRead + Unpin>, what: &str, log: &RunLog) {
    let Some(mut pipe) = pipe else { return };
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            log.child_output(what, &line);
        }
        if pending.len() > MAX_LINE {
            log.child_output(what, &std::mem::take(&mut pending));
        }
    }
    if !pending.is_empty() {
        log.child_output(what, &pending);
    }
}

/// Runs a `success` or `failure` list: each command gets `stdin_text` (the run's log) on stdin and
/// writes straight to the agent's stdout/stderr (its stderr goes through the log when the log's
/// lines are events, so that `--log-format json` keeps every stderr line JSON). A failure is
/// logged and returned, but it must not change the run's exit code: that is the caller's promise.
pub async fn run_notify(
    phase: Phase,
    lines: &[String],
    cwd: &Path,
    stdin_text: &str,
    log: &RunLog,
) -> Result<(), HookError> {
    for line in lines {
        log.line(format!("running {phase} command: {line}"));
        let spawn_err = |source| HookError::Spawn {
            phase,
            line: line.clone(),
            source,
        };
        let stderr = match log.echo() {
            Echo::Events => Stdio::piped(),
            Echo::Quiet | Echo::Text => Stdio::inherit(),
        };
        let mut child = shell(line, cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(stderr)
            .spawn()
            .map_err(spawn_err)?;
        let stdin = child.stdin.take();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A command that never reads its stdin closes the pipe early: EPIPE is expected
                // and harmless (Rust ignores SIGPIPE, so it arrives as this error).
                let _ = stdin.write_all(stdin_text.as_bytes()).await;
                let _ = stdin.shutdown().await;
            }
        };
        let what = format!("{phase} command `{line}`");
        let (status, ()) = tokio::join!(wait_relaying(&mut child, &what, log), feed);
        let status = status.map_err(spawn_err)?;
        if !status.success() {
            return Err(HookError::Failed {
                phase,
                line: line.clone(),
                status,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn pre_output_is_kept_and_the_first_failure_stops_the_list() {
        let log = RunLog::quiet(1 << 20);
        let dir = tempfile::tempdir().expect("tempdir");
        let err = run_logged(
            Phase::Pre,
            &lines(&["echo out; echo err >&2", "exit 3", "touch never"]),
            dir.path(),
            &log,
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().starts_with("pre command `exit 3` failed"),
            "{err}"
        );
        let text = log.contents();
        assert!(text.contains("out\n") && text.contains("err\n"), "{text}");
        assert!(!dir.path().join("never").exists());
    }

    #[tokio::test]
    async fn notify_commands_get_the_log_and_may_ignore_it() {
        let log = RunLog::quiet(1 << 20);
        let dir = tempfile::tempdir().expect("tempdir");
        let big = "x".repeat(2 << 20);
        run_notify(
            Phase::Success,
            &lines(&["true", "cat > got"]),
            dir.path(),
            &big,
            &log,
        )
        .await
        .expect("hooks pass");
        let got = std::fs::read_to_string(dir.path().join("got")).expect("hook wrote its stdin");
        assert_eq!(got.len(), big.len());
    }
}
