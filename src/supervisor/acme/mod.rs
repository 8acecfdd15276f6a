//! Automatic certificates over ACME (RFC 8555) for apps whose `tls:` says `acme`: ordered for
//! each of the app's hosts, answered over HTTP-01 or TLS-ALPN-01 through the proxy's challenge
//! table or over DNS-01 through the operator's hook, stored under `STATE/certs/`, served at
//! start, renewed in the window the CA suggests (ARI) or a third before they expire, and
//! published to the proxy in one swap. Only the supervisor that serves the apps orders: a
//! successor starts after its predecessor let go (`Manager::allow`).
//!
//! The files stand in layers, from the top down: `manager` (which apps are followed, and the
//! hand-over's switch) → `renew` (one app's hosts: when to order, backoff, status) → `order`
//! (one order), `ari` (when the CA suggests renewing) and `account` (the account and its HTTPS
//! client) → `challenges` (what the CA checks, and the challenge-only port), `dns_hook`
//! (DNS-01's TXT records) and `store` (the files).

mod account;
mod ari;
mod challenges;
mod dns_hook;
mod manager;
mod order;
mod renew;
mod store;

pub use manager::Manager;
