//! The supervisor's Unix sockets, the control socket and the hand-over door alike: bound private
//! to this user (mode 0600), a stale socket file of a dead supervisor replaced, a live one never
//! stolen.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Why the control socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another supervisor is already listening on {}: stop it first or use another --socket", .0.display())]
    AlreadyRunning(PathBuf),
    #[error("{} exists and is not a socket: remove it or use another --socket", .0.display())]
    NotASocket(PathBuf),
    #[error("could not {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds the control socket at `path`, private to this user (mode 0600).
///
/// The parent directory is created with mode 0700 when missing. A socket file left by a
/// supervisor that died is detected by trying to connect (refused: nobody listens) and replaced;
/// a live one is never stolen. Call it inside a tokio runtime, before other threads create files:
/// it narrows the process umask around `bind` so the socket is never reachable with looser
/// permissions, not even for an instant.
pub fn bind_socket(path: &Path) -> Result<UnixListener, BindError> {
    let io_err = |what, source| BindError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| io_err("create the socket directory of", e))?;
        }
    }
    remove_stale_socket(path)?;

    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old_umask);
    let listener = bound.map_err(|e| io_err("bind the control socket", e))?;
    // Belt and braces: the umask already made it 0600, this makes it so whatever the platform.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err("restrict the permissions of", e))?;
    Ok(listener)
}

/// Removes `path` when it is a socket nobody listens on; refuses to touch a live one or a
/// non-socket file.
fn remove_stale_socket(path: &Path) -> Result<(), BindError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(BindError::Io {
                what: "inspect",
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket(path.to_path_buf()));
    }
    // A blocking connect is fine here: on a Unix socket it answers at once, listening or not.
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(BindError::AlreadyRunning(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::warn!(
                "replacing the stale control socket {} (its supervisor is gone)",
                path.display()
            );
            std::fs::remove_file(path).map_err(|e| BindError::Io {
                what: "remove the stale socket",
                path: path.to_path_buf(),
                source: e,
            })
        }
        Err(e) => Err(BindError::Io {
            what: "probe the existing socket",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}
