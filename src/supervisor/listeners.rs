//! Listening sockets the supervisor did not bind itself: passed by systemd socket activation
//! (`LISTEN_FDS`) or handed over by the supervisor it replaces. Each app takes the one named after
//! it or bound to its `listen` address; the control socket is the Unix one at `--socket`.
//!
//! Taking sockets instead of binding them is what makes a restart invisible to clients: the
//! socket is never closed, so connections that arrive meanwhile wait in its backlog.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, SockaddrLike, SockaddrStorage};

use crate::protocol::handover::SocketInfo;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// An inherited listening TCP socket, with the name it came with, if any.
#[derive(Debug)]
pub struct Inherited {
    /// systemd's `FileDescriptorName=`, or the app name a previous supervisor gave it.
    pub name: Option<String>,
    pub addr: SocketAddr,
    pub listener: std::net::TcpListener,
    /// systemd passed it, to this supervisor or to one before it (see [`SocketInfo::systemd`]).
    pub systemd: bool,
}

/// The pool of inherited sockets not taken yet.
#[derive(Debug, Default)]
pub struct Listeners {
    control: Vec<(PathBuf, UnixListener)>,
    tcp: Vec<Inherited>,
    /// The previous supervisor's admin address (`--metrics-listen`): never an app's.
    admin: Vec<Inherited>,
}

impl Listeners {
    /// The sockets systemd passed to this process, if any (`LISTEN_PID` must be ours); the
    /// variables are removed so that app processes do not see them, and the descriptors are
    /// marked close-on-exec so that app processes do not inherit them.
    ///
    /// Call it before any thread starts: it changes the environment.
    pub fn from_systemd() -> Listeners {
        let pid = std::env::var("LISTEN_PID").ok();
        let fds = std::env::var("LISTEN_FDS").ok();
        let names = std::env::var("LISTEN_FDNAMES").ok();
        for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(var);
        }
        let mut pool = Listeners::default();
        let (Some(pid), Some(fds)) = (pid, fds) else {
            return pool;
        };
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            tracing::warn!("ignoring LISTEN_FDS={fds}: LISTEN_PID={pid} is not this process");
            return pool;
        }
        let Ok(count) = fds.parse::<RawFd>() else {
            tracing::warn!("ignoring LISTEN_FDS={fds:?}: not a number");
            return pool;
        };
        let names: Vec<&str> = names
            .as_deref()
            .map_or(Vec::new(), |n| n.split(':').collect());
        for (i, fd) in (LISTEN_FDS_START..LISTEN_FDS_START + count).enumerate() {
            // systemd names sockets without a FileDescriptorName= after their unit: no app name.
            let name = names
                .get(i)
                .filter(|n| !n.is_empty() && !n.ends_with(".socket") && **n != "unknown")
                .map(|n| (*n).to_owned());
            match adopt_fd(fd) {
                Ok(fd) => pool.add(
                    SocketInfo {
                        name,
                        systemd: true,
                        admin: false,
                    },
                    fd,
                    "systemd",
                ),
                Err(e) => tracing::warn!("ignoring descriptor {fd} from systemd: {e}"),
            }
        }
        pool
    }

    /// Adds one inherited listening socket (TCP, or Unix for the control socket); anything else
    /// is closed with a warning. `from` says where it came from, for the log.
    pub fn add(&mut self, info: SocketInfo, fd: OwnedFd, from: &str) {
        let SocketInfo {
            name,
            systemd,
            admin,
        } = info;
        match classify(&fd) {
            Ok(SocketKind::Tcp(addr)) if admin => {
                tracing::info!("admin socket {addr} from {from}");
                self.admin.push(Inherited {
                    name,
                    addr,
                    listener: std::net::TcpListener::from(fd),
                    systemd,
                });
            }
            Ok(SocketKind::Tcp(addr)) => {
                tracing::info!("listening socket {addr} from {from}{}", name_note(&name));
                self.tcp.push(Inherited {
                    name,
                    addr,
                    listener: std::net::TcpListener::from(fd),
                    systemd,
                });
            }
            Ok(SocketKind::Unix(path)) => {
                tracing::info!("control socket {} from {from}", path.display());
                self.control.push((path, UnixListener::from(fd)));
            }
            Err(e) => tracing::warn!("ignoring a socket from {from}: {e}"),
        }
    }

    /// Adds every socket of `other` (handed over) to this pool (from systemd).
    pub fn merge(&mut self, other: Listeners) {
        self.control.extend(other.control);
        self.tcp.extend(other.tcp);
        self.admin.extend(other.admin);
    }

    /// The admin socket bound to `wanted` (`--metrics-listen`), if one was handed over. Every
    /// other admin socket is closed here: this supervisor serves its admin page elsewhere, or
    /// not at all.
    pub fn take_admin(&mut self, wanted: Option<SocketAddr>) -> Option<std::net::TcpListener> {
        let mut taken = None;
        for socket in std::mem::take(&mut self.admin) {
            if taken.is_none() && Some(socket.addr) == wanted {
                taken = Some(socket.listener);
            } else {
                tracing::info!(
                    "closing the previous supervisor's admin address {}: this one {}",
                    socket.addr,
                    wanted.map_or("has none (no --metrics-listen)".to_owned(), |w| format!(
                        "listens on {w}"
                    ))
                );
            }
        }
        taken
    }

    /// The control socket bound at `path`, if one was passed. A Unix socket bound elsewhere is
    /// left alone (clients look for `--socket`), with a warning.
    pub fn take_control(&mut self, path: &Path) -> Option<UnixListener> {
        let wanted = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        let position = self.control.iter().position(|(bound, _)| {
            bound == path
                || wanted.is_some()
                    && std::fs::metadata(bound).ok().map(|m| (m.dev(), m.ino())) == wanted
        });
        match position {
            Some(i) => Some(self.control.remove(i).1),
            None => {
                for (bound, _) in &self.control {
                    tracing::warn!(
                        "ignoring the passed Unix socket {}: the control socket is {} (--socket)",
                        bound.display(),
                        path.display()
                    );
                }
                None
            }
        }
    }

    /// Puts back the socket of an app that stopped, for a later deploy on it.
    pub fn give_back(&mut self, socket: Inherited) {
        tracing::info!(app = ?socket.name, "keeping {} open for a later deploy (systemd holds it)", socket.addr);
        self.tcp.push(socket);
    }

    /// The socket for app `name` listening on `addr`: the one named after the app, else the one
    /// bound to exactly `addr`.
    pub fn take_app(&mut self, name: &str, addr: SocketAddr) -> Option<Inherited> {
        let position = self
            .tcp
            .iter()
            .position(|s| s.name.as_deref() == Some(name))
            .or_else(|| self.tcp.iter().position(|s| s.addr == addr))?;
        let taken = self.tcp.remove(position);
        if taken.addr != addr {
            tracing::warn!(app = %name, "serving on {} (the socket named {name}), not on its listen {addr}", taken.addr);
        }
        Some(taken)
    }

    /// The socket passed named after app `name` and bound to `addr`, if any: an app that joins
    /// an address already served lets go of its own copy of the socket.
    pub fn take_named(&mut self, name: &str, addr: SocketAddr) -> Option<Inherited> {
        let position = self
            .tcp
            .iter()
            .position(|s| s.name.as_deref() == Some(name) && s.addr == addr)?;
        Some(self.tcp.remove(position))
    }

    /// The TCP sockets no app took (yet): kept for apps deployed later, and handed over.
    pub fn take_unclaimed(&mut self) -> Vec<Inherited> {
        std::mem::take(&mut self.tcp)
    }

    pub fn is_empty(&self) -> bool {
        self.control.is_empty() && self.tcp.is_empty() && self.admin.is_empty()
    }
}

/// Whether two listening addresses take the same port on a common interface (an unspecified
/// address such as `0.0.0.0` takes every interface of its family): what keeps an app off the
/// admin address.
pub fn same_address(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.ip().is_unspecified() || b.ip().is_unspecified()) && a.is_ipv4() == b.is_ipv4())
}

fn name_note(name: &Option<String>) -> String {
    name.as_deref()
        .map_or_else(String::new, |n| format!(" (named {n})"))
}

/// What a usable inherited socket listens on: a TCP address (an app's) or a Unix path (the
/// control socket).
enum SocketKind {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Takes ownership of a descriptor passed at exec, after checking it is open; makes it
/// close-on-exec.
fn adopt_fd(fd: RawFd) -> Result<OwnedFd, String> {
    let flags = fcntl(fd, FcntlArg::F_GETFD).map_err(|e| format!("not open: {e}"))?;
    let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
    fcntl(fd, FcntlArg::F_SETFD(flags)).map_err(|e| format!("cannot set close-on-exec: {e}"))?;
    // SAFETY: systemd passed this descriptor to us and nothing else in the process owns it; it
    // was just checked to be open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What listening socket `fd` is: only listening stream sockets, TCP or Unix, are usable.
fn classify(fd: &OwnedFd) -> Result<SocketKind, String> {
    let raw = fd.as_raw_fd();
    let kind = getsockopt(fd, sockopt::SockType).map_err(|e| format!("not a socket: {e}"))?;
    if kind != SockType::Stream {
        return Err(format!(
            "descriptor {raw} is a {kind:?} socket, not a stream socket"
        ));
    }
    if !getsockopt(fd, sockopt::AcceptConn).unwrap_or(false) {
        return Err(format!("descriptor {raw} is not listening"));
    }
    let local: SockaddrStorage = getsockname(raw).map_err(|e| format!("getsockname: {e}"))?;
    if let Some(v4) = local.as_sockaddr_in() {
        return Ok(SocketKind::Tcp(SocketAddr::from((v4.ip(), v4.port()))));
    }
    if let Some(v6) = local.as_sockaddr_in6() {
        return Ok(SocketKind::Tcp(SocketAddr::from((v6.ip(), v6.port()))));
    }
    if let Some(path) = local.as_unix_addr().and_then(|u| u.path()) {
        return Ok(SocketKind::Unix(path.to_owned()));
    }
    Err(format!(
        "descriptor {raw} is a {:?} socket, neither TCP nor a Unix socket with a path",
        local.family()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: Option<&str>) -> SocketInfo {
        SocketInfo {
            name: name.map(str::to_owned),
            ..SocketInfo::default()
        }
    }

    fn tcp() -> (std::net::TcpListener, SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        (listener, addr)
    }

    #[test]
    fn apps_take_their_socket_by_name_first_then_by_address() {
        let ((a, a_addr), (b, b_addr)) = (tcp(), tcp());
        let mut pool = Listeners::default();
        pool.add(info(None), a.into(), "test");
        pool.add(info(Some("shop")), b.into(), "test");
        let shop = pool.take_app("shop", a_addr).expect("named socket");
        assert_eq!(shop.listener.local_addr().unwrap(), b_addr, "the name wins");
        let other = pool.take_app("blog", a_addr).expect("by address");
        assert_eq!(other.listener.local_addr().unwrap(), a_addr);
        assert!(pool.take_app("blog", a_addr).is_none(), "taken once");
        assert!(pool.is_empty());
    }

    #[test]
    fn the_admin_socket_is_no_apps_and_is_taken_only_at_its_address() {
        let ((a, a_addr), (b, _)) = (tcp(), tcp());
        let admin = SocketInfo {
            admin: true,
            ..SocketInfo::default()
        };
        let mut pool = Listeners::default();
        pool.add(admin.clone(), a.into(), "test");
        assert!(pool.take_app("shop", a_addr).is_none(), "no app takes it");
        let taken = pool.take_admin(Some(a_addr)).expect("taken at its address");
        assert_eq!(taken.local_addr().unwrap(), a_addr);
        pool.add(admin, b.into(), "test");
        assert!(pool.take_admin(Some(a_addr)).is_none(), "another address");
        assert!(pool.is_empty(), "the one not taken is closed");
    }

    #[test]
    fn an_address_is_the_same_on_the_same_port_of_a_common_interface() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(same_address(at("127.0.0.1:9180"), at("127.0.0.1:9180")));
        assert!(same_address(at("0.0.0.0:9180"), at("127.0.0.1:9180")));
        assert!(same_address(at("[::1]:9180"), at("[::]:9180")));
        assert!(!same_address(at("127.0.0.1:9180"), at("127.0.0.2:9180")));
        assert!(!same_address(at("127.0.0.1:9180"), at("127.0.0.1:9181")));
    }

    #[test]
    fn the_control_socket_is_the_unix_one_at_its_path_and_the_rest_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.sock");
        let unix = UnixListener::bind(&path).expect("bind unix");
        let (_listening, addr) = tcp();
        let connected = std::net::TcpStream::connect(addr).expect("connect");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let mut pool = Listeners::default();
        pool.add(info(None), unix.into(), "test");
        pool.add(info(None), connected.into(), "test");
        pool.add(info(None), udp.into(), "test");
        assert!(
            pool.take_unclaimed().is_empty(),
            "only listening stream sockets are kept"
        );
        assert!(pool.take_control(&dir.path().join("other.sock")).is_none());
        assert!(pool.take_control(&path).is_some());
        assert!(pool.is_empty());
    }
}
