//! Zero-drop restarts and upgrades: a new supervisor (`cutover supervise --take-over`) takes the
//! listening sockets of the running one, apps' and control socket alike, over
//! `STATE/handover.sock` with SCM_RIGHTS, and re-adopts its app processes from the state file.
//!
//! The sockets are never closed on the way, so a connection that arrives meanwhile waits in the
//! kernel's backlog (or is served by the old proxy, which keeps accepting until the new one
//! serves). Sequence, old side: stop accepting control connections, let go of the apps (instances
//! keep running, state persisted), send the sockets, wait for "serving", then stop accepting on
//! the apps' sockets and let client connections go ([`crate::supervisor::proxy::Proxy::close`]).
//! If the new one fails to start, the old one takes its apps back on the same sockets.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::{UnixListener, UnixStream};

use super::apps::{self, Released};
use super::listeners::Listeners;
use super::socket::{bind_socket, BindError};
use crate::protocol::codec::{self, FrameError};
use crate::protocol::handover::{Offer, Outcome, SocketInfo, TakeOver, HANDOVER_VERSION};

/// How long the new supervisor may take to ask, once connected.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long letting go of the apps, and then starting them in the new supervisor, may take:
/// re-adoption is quick, but an interrupted rollout's candidates are stopped first.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// The most descriptors one SCM_RIGHTS message carries on Linux (`SCM_MAX_FD`).
const MAX_SOCKETS: usize = 253;

const SUPERVISOR: &str = concat!("cutover ", env!("CARGO_PKG_VERSION"));

/// Where a supervisor waits for its successor: next to its state, which it owns alone.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("handover.sock")
}

/// Why a hand-over could not be asked for or did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("the running supervisor refused to hand over: {0}")]
    Refused(String),
    #[error("hand-over with the running supervisor ({}) failed: {what}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("hand-over with the running supervisor failed: {0}")]
    Frame(#[from] FrameError),
    #[error("another supervisor already runs on this state directory ({}): stop it, or start this one with --take-over", .0.display())]
    AlreadyRunning(PathBuf),
    #[error(transparent)]
    Bind(BindError),
}

/// The old side's door: a Unix socket (mode 0600) on which a successor asks to take over.
/// Dropping it removes the socket file, unless another supervisor has bound one since.
#[derive(Debug)]
pub struct Door {
    listener: UnixListener,
    path: PathBuf,
    inode: Option<(u64, u64)>,
}

impl Door {
    /// Binds `STATE/handover.sock`; a live one means another supervisor runs on this state.
    pub fn open(state_dir: &Path) -> Result<Door, HandoverError> {
        let path = socket_path(state_dir);
        let listener = bind_socket(&path).map_err(|e| match e {
            BindError::AlreadyRunning(path) => HandoverError::AlreadyRunning(path),
            other => HandoverError::Bind(other),
        })?;
        Ok(Door {
            inode: inode(&path),
            listener,
            path,
        })
    }

    /// Waits for a successor's valid [`TakeOver`]; probes, strangers and garbled requests are
    /// turned away and the wait goes on.
    pub async fn requested(&self) -> Successor {
        let owner = nix::unistd::geteuid().as_raw();
        loop {
            let Ok((mut stream, _)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(peer) = stream.peer_cred() else {
                continue;
            };
            if peer.uid() != owner && peer.uid() != 0 {
                tracing::warn!(
                    "refused a take-over from uid {}: only uid {owner} and root may",
                    peer.uid()
                );
                continue;
            }
            let ask: TakeOver = match codec::read_frame_within(&mut stream, ASK_TIMEOUT).await {
                Ok(ask) => ask,
                Err(FrameError::Closed) => continue,
                Err(e) => {
                    tracing::warn!("ignoring a take-over request: {e}");
                    continue;
                }
            };
            if ask.version < HANDOVER_VERSION {
                let refusal = Offer::Refused {
                    message: format!(
                        "it speaks hand-over version {}, this supervisor {HANDOVER_VERSION}",
                        ask.version
                    ),
                };
                let _ = codec::write_frame(&mut stream, &refusal).await;
                continue;
            }
            tracing::info!(
                "{} (pid {}) takes over from this supervisor",
                ask.supervisor,
                ask.pid
            );
            return Successor {
                stream,
                pid: ask.pid,
            };
        }
    }
}

impl Drop for Door {
    fn drop(&mut self) {
        if self.inode.is_some() && inode(&self.path) == self.inode {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn inode(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A new supervisor that asked to take over, as the old one sees it.
#[derive(Debug)]
pub struct Successor {
    stream: UnixStream,
    pid: u32,
}

/// What the old supervisor keeps when its successor could not start: everything to carry on.
#[derive(Debug)]
pub struct TakeBack {
    pub control: std::os::unix::net::UnixListener,
    pub listeners: Listeners,
    /// The released apps, whose proxies still serve: to close once the apps run again.
    pub released: Released,
}

impl Successor {
    /// Sends `control`, the admin socket (a copy: this supervisor keeps its own) and every
    /// released socket, with the count of hand-overs behind this supervisor, waits until the
    /// successor serves, then stops the released proxies and lets their clients go. On failure,
    /// hands everything back (the admin copy is closed: the caller still holds the socket).
    pub async fn hand_over(
        mut self,
        control: OwnedFd,
        admin: Option<OwnedFd>,
        handovers: u64,
        released: Released,
    ) -> Result<(), Box<TakeBack>> {
        let mut fds: Vec<(SocketInfo, OwnedFd)> = vec![(SocketInfo::default(), control)];
        if let Some(admin) = admin {
            let info = SocketInfo {
                admin: true,
                ..SocketInfo::default()
            };
            fds.push((info, admin));
        }
        for app in &released.apps {
            for (info, proxy) in app.sockets() {
                match proxy.listener() {
                    Ok(listener) => fds.push((info, listener.into())),
                    Err(e) => {
                        tracing::error!(app = %app.name, "cannot hand over {}: {e}", proxy.local_addr)
                    }
                }
            }
        }
        for inherited in &released.unclaimed {
            let info = SocketInfo {
                name: inherited.name.clone(),
                systemd: inherited.systemd,
                admin: false,
            };
            match inherited.listener.try_clone() {
                Ok(listener) => fds.push((info, listener.into())),
                Err(e) => tracing::error!("cannot hand over {}: {e}", inherited.addr),
            }
        }
        let outcome = match self.offer(&fds, handovers).await {
            Ok(()) => tokio::time::timeout(
                STEP_TIMEOUT,
                codec::read_frame::<Outcome, _>(&mut self.stream),
            )
            .await
            .unwrap_or(Err(FrameError::Timeout(STEP_TIMEOUT)))
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(Outcome::Serving) => {
                tracing::info!(
                    "pid {} serves on the {} handed-over socket(s): closing this supervisor's client connections",
                    self.pid,
                    fds.len()
                );
                apps::close_all(&released.apps, apps::Leave::Drain).await;
                Ok(())
            }
            Ok(Outcome::Failed { message }) | Err(message) => {
                tracing::error!(
                    "the hand-over to pid {} failed ({message}): taking the apps back",
                    self.pid
                );
                let mut listeners = Listeners::default();
                let mut fds = fds.into_iter();
                let control = fds.next().map(|(_, fd)| fd.into());
                // The admin copy is dropped: the caller serves its own socket still.
                for (info, fd) in fds.filter(|(info, _)| !info.admin) {
                    listeners.add(info, fd, "the failed hand-over");
                }
                let control = control.expect("the control socket is always the first descriptor");
                Err(Box::new(TakeBack {
                    control,
                    listeners,
                    released,
                }))
            }
        }
    }

    async fn offer(&mut self, fds: &[(SocketInfo, OwnedFd)], handovers: u64) -> io::Result<()> {
        if fds.len() > MAX_SOCKETS {
            return Err(io::Error::other(format!(
                "{} sockets are more than one hand-over carries ({MAX_SOCKETS})",
                fds.len()
            )));
        }
        let offer = Offer::Sockets {
            version: HANDOVER_VERSION,
            supervisor: SUPERVISOR.to_owned(),
            sockets: fds.iter().map(|(info, _)| info.clone()).collect(),
            handovers,
        };
        let frame = codec::encode(&offer).map_err(io::Error::other)?;
        let raw: Vec<RawFd> = fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let stream = &self.stream;
        let sent = stream
            .async_io(Interest::WRITABLE, || {
                let rights = [ControlMessage::ScmRights(&raw)];
                sendmsg::<()>(
                    stream.as_fd().as_raw_fd(),
                    &[IoSlice::new(&frame)],
                    &rights,
                    MsgFlags::empty(),
                    None,
                )
                .map_err(io::Error::from)
            })
            .await?;
        // The descriptors went with the first byte; the rest of a long frame follows plainly.
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(&frame[sent..]).await
    }
}

/// The running supervisor as its successor sees it during the hand-over.
#[derive(Debug)]
pub struct Predecessor {
    stream: UnixStream,
    /// The hand-overs behind the predecessor (see [`Offer::Sockets`]).
    handovers: u64,
}

impl Predecessor {
    /// The hand-overs behind this supervisor once it serves: its predecessor's and this one.
    pub fn handovers(&self) -> u64 {
        self.handovers + 1
    }

    /// Tells the old supervisor that this one serves: it stops accepting and exits.
    pub async fn serving(mut self) {
        if let Err(e) = codec::write_frame(&mut self.stream, &Outcome::Serving).await {
            tracing::warn!("could not tell the previous supervisor that this one serves: {e}");
        }
    }

    /// Tells the old supervisor that this one cannot start, so that it carries on.
    pub async fn failed(mut self, message: String) {
        let _ = codec::write_frame(&mut self.stream, &Outcome::Failed { message }).await;
    }
}

/// Asks the supervisor running on `state_dir` to hand over. `None` when none runs (no socket,
/// or nobody listening on it): the caller starts as usual.
pub async fn take_over(
    state_dir: &Path,
) -> Result<Option<(Predecessor, Listeners)>, HandoverError> {
    let path = socket_path(state_dir);
    let io_err = |what, source| HandoverError::Io {
        what,
        path: path.clone(),
        source,
    };
    let mut stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            tracing::info!(
                "no supervisor runs on {}: starting afresh",
                state_dir.display()
            );
            return Ok(None);
        }
        Err(e) => return Err(io_err("connect", e)),
    };
    let ask = TakeOver {
        version: HANDOVER_VERSION,
        pid: std::process::id(),
        supervisor: SUPERVISOR.to_owned(),
    };
    codec::write_frame(&mut stream, &ask).await?;
    let (frame, fds) = tokio::time::timeout(STEP_TIMEOUT, receive(&stream))
        .await
        .map_err(|_| FrameError::Timeout(STEP_TIMEOUT))?
        .map_err(|e| io_err("receive the sockets", e))?;
    let frame = complete(&mut stream, frame).await?;
    let offer: Offer = serde_json::from_slice(&frame).map_err(FrameError::Decode)?;
    let (supervisor, infos, handovers) = match offer {
        Offer::Sockets {
            supervisor,
            sockets,
            handovers,
            ..
        } => (supervisor, sockets, handovers),
        Offer::Refused { message } => return Err(HandoverError::Refused(message)),
    };
    tracing::info!("{supervisor} handed over {} socket(s)", fds.len());
    let mut listeners = Listeners::default();
    let mut infos = infos.into_iter();
    for fd in fds {
        let info = infos.next().unwrap_or_default();
        listeners.add(info, fd, "the previous supervisor");
    }
    Ok(Some((Predecessor { stream, handovers }, listeners)))
}

/// One `recvmsg`: the bytes read so far and the descriptors that came with them (close-on-exec).
async fn receive(stream: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    stream
        .async_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                stream.as_fd().as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    // SAFETY: the kernel just installed these descriptors in this process for us.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                return Err(io::Error::other("some sockets were cut off in transit"));
            }
            let bytes = msg.bytes;
            Ok((bytes, fds))
        })
        .await
        .map(|(bytes, fds)| {
            buf.truncate(bytes);
            (buf, fds)
        })
}

/// The JSON body of the frame whose first bytes are `start`, reading what is still missing.
async fn complete(stream: &mut UnixStream, mut start: Vec<u8>) -> Result<Vec<u8>, FrameError> {
    if start.is_empty() {
        return Err(FrameError::Closed);
    }
    if start.len() < 4 {
        let missing = 4 - start.len();
        let mut rest = vec![0u8; missing];
        stream
            .read_exact(&mut rest)
            .await
            .map_err(|_| FrameError::Truncated)?;
        start.extend_from_slice(&rest);
    }
    let len = u32::from_be_bytes([start[0], start[1], start[2], start[3]]) as usize;
    if len > codec::MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: codec::MAX_FRAME,
        });
    }
    if start.len() - 4 < len {
        let mut rest = vec![0u8; len - (start.len() - 4)];
        stream
            .read_exact(&mut rest)
            .await
            .map_err(|_| FrameError::Truncated)?;
        start.extend_from_slice(&rest);
    }
    start.drain(..4);
    start.truncate(len);
    Ok(start)
}
