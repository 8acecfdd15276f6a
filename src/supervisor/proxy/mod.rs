//! The apps' public face: a reverse proxy that owns each `listen` address, tells which app a
//! request is for (by host and path, when apps share the address), and spreads it over the
//! healthy instances of that app's route, which the deploy swaps atomically.
//!
//! HTTP/1.1 (keep-alive, WebSocket upgrades) and HTTP/2 to clients, over TLS or not; HTTP/1.1
//! to instances, or HTTP/2 without TLS or over verified TLS (gRPC: trailers pass). A failed connect is retried on another instance; per-instance counters (requests, 5xx, latency) and in-flight tracking for draining.
//!
//! The route is read lock-free on every request (`arc-swap`), and an instance is chosen per
//! request, not per connection: after a swap, clients' existing keep-alive connections move to the
//! new instances with their very next request.
//!
//! Built for speed the way nginx is (`workers`): one event loop per core, each accepting on the
//! shared listening socket and keeping its own idle connections to each instance, so a request
//! never leaves the thread that accepted its connection. Its two sides: *downstream*, the client
//! connections it accepts (hyper's server; `downstream` counts and closes them, `serve` drives
//! each), and *upstream*, its connections to the instances (a small HTTP/1.1 client of its own,
//! `upstream` and `body`, run inside the same task).
//!
//! The files stand in layers, from the top down: each uses only the lines below it and, on its
//! own line, the files after it (this file only declares them and re-exports what the
//! supervisor uses):
//!
//! - `handle` (the `Proxy` one app holds: its site on an address) → `front` (the listening
//!   address, shared by the apps routed on it) → `workers` (threads, accept loops);
//! - `connection` (one accepted connection: PROXY header, TLS, HTTP/1.1 or HTTP/2), `forward`
//!   (one HTTP request), `forward_h2` (its leg to instances over HTTP/2, `upstream: h2c` or
//!   `h2`), `tcp` (TCP mode);
//! - `serve` (one downstream connection's timer and close), `body` (a response on its way),
//!   `access_entry` (a request's access-log line in the making), `state` (what an address's
//!   workers share: the sites table a request picks its app from by host and path, the
//!   connection settings, TLS), `site` (one app on it: its route in each worker's lane, its
//!   backends and counters, its hold), `tls` (certificates and the SNI table);
//! - `route/` (routes and picking: the route and each worker's table, the pick of an instance,
//!   a canary's `split`, a `backend` with its counters), `downstream` (the accepted
//!   connections);
//! - `access_log` (the file and its writer thread), `access_line` (one line's JSON), `pool`,
//!   `upstream`, `request`, `head`, `framing` (HTTP/1.1 to and from instances), `upstream_h2`
//!   (an HTTP/2 connection to an instance), `paced_body` (a request body on its way over it), `limits`,
//!   `pace`, `histogram` (latency buckets, for the counters and the canary's p99), `room`,
//!   `proxy_protocol`, `challenges` (the ACME challenges every address answers, written by
//!   `supervisor::acme`); `fuzz` (hidden) feeds `head` and `framing`.

mod access_entry;
mod access_line;
mod access_log;
mod body;
mod challenges;
mod connection;
mod downstream;
mod forward;
mod forward_h2;
mod framing;
mod front;
#[doc(hidden)]
pub mod fuzz;
mod handle;
mod head;
mod histogram;
mod limits;
mod pace;
mod paced_body;
mod pool;
mod proxy_protocol;
mod request;
mod room;
mod route;
mod serve;
mod site;
mod state;
mod tcp;
mod tls;
mod upstream;
mod upstream_h2;
mod workers;

pub use access_log::LineLosses;
pub use challenges::{challenges, Challenges, ACME_TLS_ALPN};
pub use handle::{CertSlot, Proxy};
pub use histogram::{quantile, recut};
pub use limits::ClientLimits;
pub use route::{Backend, BackendStats, CanaryRoute, Route, Side, Slot, SlotStats};
pub use tls::{load as load_certificate, validity as certificate_validity};
