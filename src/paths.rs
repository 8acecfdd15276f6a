//! Default locations of the state directory and the control socket, for root and other users.
//!
//! root gets the FHS places (`/var/lib/cutover`, `/run/cutover/cutover.sock`); anyone else gets
//! XDG places under their home, so a developer can run the supervisor without privileges.

use std::path::PathBuf;

/// Where the agent keeps its locks and replay marks, and the supervisor its state file.
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/cutover");
    }
    if let Some(dir) = non_empty_env("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("cutover");
    }
    home_dir().join(".local/state/cutover")
}

/// Where the supervisor listens and where the agent and the CLI look for it.
pub fn default_socket() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/cutover/cutover.sock");
    }
    if let Some(dir) = non_empty_env("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("cutover/cutover.sock");
    }
    default_state_dir().join("cutover.sock")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn home_dir() -> PathBuf {
    non_empty_env("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
