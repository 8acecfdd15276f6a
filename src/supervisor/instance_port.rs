//! An instance's port, which no other process may keep it from: either the supervisor binds it
//! and hands the socket over (`socket_activation`, so it cannot be taken), or the app binds it
//! itself and, when another process is found holding it (before a start, or after an exit: the
//! app could not bind it), the instance moves to a fresh port.
//!
//! A port found free is released before the app binds it (`process::free_port`), so without
//! socket activation the move is the only remedy; it counts no exit against the release.

use std::io;
use std::net::{SocketAddr, TcpListener};

use crate::supervisor::process::{self, SpawnSpec};

/// Moves in a row (without a healthy run between) before a taken port counts as an ordinary
/// exit: a fresh port is free when chosen, so more than one move is bad luck already.
const MOVES_MAX: u32 = 5;

/// Where an instance listens, and the socket the supervisor holds for it, if any.
#[derive(Debug)]
pub struct InstancePort {
    pub addr: SocketAddr,
    /// The app's `run` line before `{port}` was substituted: a move substitutes again.
    run: String,
    socket_activation: bool,
    /// Bound before the first start and kept for the instance's life (restarts included).
    socket: Option<TcpListener>,
    moves: u32,
}

/// The instance now listens at `addr`; `why` says what happened, for its log and `status`.
#[derive(Debug)]
pub struct Moved {
    pub addr: SocketAddr,
    pub why: String,
}

impl InstancePort {
    pub fn new(addr: SocketAddr, run: &str, socket_activation: bool) -> InstancePort {
        InstancePort {
            addr,
            run: run.to_owned(),
            socket_activation,
            socket: None,
            moves: 0,
        }
    }

    /// The socket to hand over as fd 3 (socket activation only).
    pub fn socket(&self) -> Option<&TcpListener> {
        self.socket.as_ref()
    }

    /// Before a start: binds the socket to hand over, or checks that no one took the port.
    pub fn before_start(&mut self, spawn: &mut SpawnSpec) -> io::Result<Option<Moved>> {
        if self.socket_activation {
            if self.socket.is_some() {
                return Ok(None);
            }
            return match TcpListener::bind(self.addr) {
                Ok(socket) => {
                    self.socket = Some(socket);
                    Ok(None)
                }
                // Taken after the port was chosen (or, after a supervisor restart, while it
                // was down): bind a fresh one, which no one can take from now on.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    let socket = TcpListener::bind((self.addr.ip(), 0))?;
                    let port = socket.local_addr()?.port();
                    self.socket = Some(socket);
                    Ok(Some(self.move_to(port, spawn)))
                }
                Err(e) => Err(e),
            };
        }
        if process::port_taken(self.addr) {
            let port = process::free_port(self.addr.ip())?;
            return Ok(Some(self.move_to(port, spawn)));
        }
        Ok(None)
    }

    /// After an exit: whether the app could not bind because another process holds its port,
    /// in which case it moves (and the exit is not the app's fault).
    pub fn after_exit(&mut self, spawn: &mut SpawnSpec) -> Option<Moved> {
        if self.socket_activation || self.moves >= MOVES_MAX || !process::port_taken(self.addr) {
            return None;
        }
        let port = process::free_port(self.addr.ip()).ok()?;
        Some(self.move_to(port, spawn))
    }

    /// A healthy run forgives earlier moves.
    pub fn healthy(&mut self) {
        self.moves = 0;
    }

    fn move_to(&mut self, port: u16, spawn: &mut SpawnSpec) -> Moved {
        let old = self.addr.port();
        self.moves += 1;
        self.addr.set_port(port);
        spawn.command = self.run.replace("{port}", &port.to_string());
        spawn.env.insert("PORT".to_owned(), port.to_string());
        Moved {
            addr: self.addr,
            why: format!("port {old} was held by another process; moved to port {port}"),
        }
    }
}
