//! Canary routing: which side of a split route a request goes to — the tester header, the sticky
//! cookie, or its turn by weight — and the cookie that keeps a new client on that side.
//!
//! Turns are counted, not drawn: request `n` goes to the canary when `floor((n+1)·w)` passes
//! `floor(n·w)`, so any run of requests gets the share `w` to within one request, at any
//! resolution down to one part per million (0.1 % is exact).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::Backend;
use crate::protocol::canary::Share;

/// The new version's part of a route while a canary runs.
#[derive(Debug, Clone)]
pub struct CanaryRoute {
    /// The new version's instances.
    pub backends: Vec<Arc<Backend>>,
    /// Share of new clients' requests they get.
    pub share: Share,
    /// Sticky cookie name (value `canary` or `stable`).
    pub cookie: String,
    /// Requests carrying this header always go to the canary.
    pub header: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Stable,
    Canary,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Stable => "stable",
            Side::Canary => "canary",
        }
    }
}

/// The request-time half of a `CanaryRoute`: parsed once per route change.
#[derive(Debug)]
pub(super) struct Split {
    ppm: u64,
    cookie: String,
    header: Option<HeaderName>,
    turn: AtomicU64,
}

impl Split {
    pub fn new(route: &CanaryRoute) -> Split {
        Split {
            ppm: u64::from(route.share.ppm()),
            cookie: route.cookie.clone(),
            header: HeaderName::from_bytes(route.header.as_bytes()).ok(),
            turn: AtomicU64::new(0),
        }
    }

    /// The side for a request, and the cookie to set when the client has none yet.
    pub fn side(&self, headers: &HeaderMap) -> (Side, Option<HeaderValue>) {
        if self
            .header
            .as_ref()
            .is_some_and(|h| headers.contains_key(h))
        {
            return (Side::Canary, None);
        }
        if let Some(side) = cookie_side(headers, &self.cookie) {
            return (side, None);
        }
        let n = u128::from(self.turn.fetch_add(1, Ordering::Relaxed));
        let w = u128::from(self.ppm);
        let side = if (n + 1) * w / 1_000_000 > n * w / 1_000_000 {
            Side::Canary
        } else {
            Side::Stable
        };
        let cookie = format!(
            "{}={}; Path=/; HttpOnly; SameSite=Lax",
            self.cookie,
            side.name()
        );
        (side, HeaderValue::from_str(&cookie).ok())
    }
}

/// The side named by cookie `name` in the request's `Cookie` headers, if any.
fn cookie_side(headers: &HeaderMap, name: &str) -> Option<Side> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| match value.trim() {
            "canary" => Some(Side::Canary),
            "stable" => Some(Side::Stable),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(share: &str) -> Split {
        Split::new(&CanaryRoute {
            backends: Vec::new(),
            share: share.parse().unwrap(),
            cookie: "cutover_canary".to_owned(),
            header: "x-cutover-canary".to_owned(),
        })
    }

    fn canary_count(split: &Split, requests: usize) -> usize {
        (0..requests)
            .filter(|_| split.side(&HeaderMap::new()).0 == Side::Canary)
            .count()
    }

    #[test]
    fn turns_give_the_share_exactly() {
        assert_eq!(canary_count(&split("10%"), 20_000), 2_000);
        assert_eq!(canary_count(&split("0.1%"), 20_000), 20);
        assert_eq!(canary_count(&split("33.3333%"), 3_000_000), 999_999);
        // Any window of a run is within one request of its share.
        let s = split("5%");
        let first = canary_count(&s, 137);
        assert!((6..=7).contains(&first), "{first}");
    }

    #[test]
    fn header_and_cookie_pick_the_side_and_new_clients_get_a_cookie() {
        let s = split("1%");
        let mut headers = HeaderMap::new();
        headers.insert("x-cutover-canary", HeaderValue::from_static("1"));
        assert_eq!(s.side(&headers), (Side::Canary, None));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; cutover_canary=canary"),
        );
        assert_eq!(s.side(&headers), (Side::Canary, None));
        // Turns: the 100th new client of a 1% split is the first on the canary.
        let sides: Vec<(Side, Option<HeaderValue>)> =
            (0..100).map(|_| s.side(&HeaderMap::new())).collect();
        assert_eq!(sides[0].0, Side::Stable);
        assert_eq!(
            sides[0].1.as_ref().unwrap(),
            "cutover_canary=stable; Path=/; HttpOnly; SameSite=Lax"
        );
        assert_eq!(sides[99].0, Side::Canary);
        assert!(sides[99]
            .1
            .as_ref()
            .unwrap()
            .to_str()
            .unwrap()
            .contains("=canary"));
    }
}
