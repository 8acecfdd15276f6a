//! The ACME challenges every proxy address answers before any routing: HTTP-01's
//! `GET /.well-known/acme-challenge/<token>` on any plain-HTTP address, and TLS-ALPN-01's
//! certificate for a ClientHello that offers ALPN `acme-tls/1` (RFC 8737).
//!
//! One table per process, not per address: the CA may come to any address serving the name (port
//! 80 of another app, or the challenge-only port `supervisor::acme` opens), and one process runs
//! one supervisor. Written by `supervisor::acme` while an order waits for the CA; read lock-free.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

/// The ALPN protocol of TLS-ALPN-01: a connection that chose it is closed after the handshake.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path HTTP-01 tokens are asked for under.
pub const HTTP_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The challenges waiting for the CA.
#[derive(Debug, Default)]
pub struct Challenges {
    /// HTTP-01: token → key authorization.
    http: ArcSwap<HashMap<String, String>>,
    /// TLS-ALPN-01: name (lower case) → its challenge certificate.
    alpn: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

static TABLE: LazyLock<Challenges> = LazyLock::new(Challenges::default);

/// The process's challenge table.
pub fn challenges() -> &'static Challenges {
    &TABLE
}

impl Challenges {
    /// Answers `GET /.well-known/acme-challenge/<token>` with `key_authorization` from now on.
    pub fn add_http(&self, token: &str, key_authorization: &str) {
        self.http.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(token.to_owned(), key_authorization.to_owned());
            map
        });
    }

    pub fn remove_http(&self, token: &str) {
        self.http.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(token);
            map
        });
    }

    /// Serves `cert` to a ClientHello for `name` offering `acme-tls/1`, from now on.
    pub fn add_alpn(&self, name: &str, cert: Arc<CertifiedKey>) {
        self.alpn.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(name.to_ascii_lowercase(), cert.clone());
            map
        });
    }

    pub fn remove_alpn(&self, name: &str) {
        self.alpn.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(&name.to_ascii_lowercase());
            map
        });
    }

    /// The key authorization for a request's `path`, when it asks for a waiting HTTP-01 token.
    #[inline]
    pub fn http_answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP_CHALLENGE_PREFIX)?;
        let map = self.http.load();
        if map.is_empty() {
            return None;
        }
        map.get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for `name`, if one waits.
    pub fn alpn_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.alpn.load();
        if map.is_empty() {
            return None;
        }
        map.get(&name.to_ascii_lowercase()).cloned()
    }
}
