//! The supervisor end to end: blue-green under load, rollback, crash recovery, the control socket.
