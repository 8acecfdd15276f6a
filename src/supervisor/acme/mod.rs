//! Automatic certificates over ACME (RFC 8555) for apps whose `tls:` says `acme`: ordered for
//! each of the app's hosts, answered over HTTP-01 or TLS-ALPN-01 through the proxy's challenge
//! table, stored under `STATE/certs/`, served at start, renewed before they expire and
//! published to the proxy in one swap. Only the supervisor that serves the apps orders: a
//! successor starts after its predecessor let go (`Manager::allow`).
//!
//! The files stand in layers, from the top down: `manager` (which apps are followed, and the
//! hand-over's switch) → `renew` (one app's hosts: when to order, backoff, status) → `order`
//! (one order) and `account` (the account and its HTTPS client) → `challenges` (what the CA
//! checks, and the challenge-only port) and `store` (the files).

mod account;
mod challenges;
mod manager;
mod order;
mod renew;
mod store;

pub use manager::Manager;
