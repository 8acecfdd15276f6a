//! The proxy with real backends: keep-alive, WebSocket, retry on failed connect, counters.
