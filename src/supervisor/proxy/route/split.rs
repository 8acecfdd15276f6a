//! A route split between the stable release and a canary: which side a request goes to — the
//! tester header, the sticky cookie, or its turn by weight — and the cookie that keeps a new
//! client on that side.
//!
//! Turns are counted, not drawn: request `n` goes to the canary when `floor((n+1)·w)` passes
//! `floor(n·w)`, so any run of requests gets the share `w` to within one request, at any
//! resolution down to one part per million (0.1 % is exact).
//!
//! Neither the header nor the cookie lets a stranger steer the judged traffic: requests the
//! header pins to the canary are counted apart and never judged, and the cookie carries a MAC
//! of its side under the proxy's own key, so a forged one counts as no cookie.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

use super::backend::{Backend, Routed};
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
    Stable = 0,
    Canary = 1,
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
pub(crate) struct Split {
    ppm: u64,
    cookie: String,
    header: Option<HeaderName>,
    turn: AtomicU64,
    /// The cookie's value for each side (`stable.MAC`, `canary.MAC`), and the `Set-Cookie` that
    /// gives it.
    values: [String; 2],
    set_cookies: [HeaderValue; 2],
}

/// Where a request goes during a canary, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    pub side: Side,
    /// The cookie to set: the client had no valid one yet.
    pub cookie: Option<HeaderValue>,
    pub routed: Routed,
}

impl Split {
    /// `key`: the proxy's key for the cookie's MAC.
    pub fn new(route: &CanaryRoute, key: &[u8]) -> Split {
        let values = [Side::Stable, Side::Canary].map(|side| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(side.name().as_bytes());
            let tag = mac.finalize().into_bytes();
            format!("{}.{}", side.name(), hex::encode(&tag[..12]))
        });
        let set_cookies = values.clone().map(|value| {
            let cookie = format!("{}={value}; Path=/; HttpOnly; SameSite=Lax", route.cookie);
            HeaderValue::from_str(&cookie)
                .unwrap_or_else(|_| HeaderValue::from_static("cutover_canary=; Path=/"))
        });
        Split {
            ppm: u64::from(route.share.ppm()),
            cookie: route.cookie.clone(),
            header: HeaderName::from_bytes(route.header.as_bytes()).ok(),
            turn: AtomicU64::new(0),
            values,
            set_cookies,
        }
    }

    /// The side for a request, and the cookie to set when the client has no valid one yet.
    pub fn side(&self, headers: &HeaderMap) -> Choice {
        if self
            .header
            .as_ref()
            .is_some_and(|h| headers.contains_key(h))
        {
            return Choice {
                side: Side::Canary,
                cookie: None,
                routed: Routed::Pinned,
            };
        }
        if let Some(side) = self.cookie_side(headers) {
            return Choice {
                side,
                cookie: None,
                routed: Routed::ByRoute,
            };
        }
        let n = u128::from(self.turn.fetch_add(1, Ordering::Relaxed));
        let w = u128::from(self.ppm);
        let side = if (n + 1) * w / 1_000_000 > n * w / 1_000_000 {
            Side::Canary
        } else {
            Side::Stable
        };
        Choice {
            side,
            cookie: Some(self.set_cookies[side as usize].clone()),
            routed: Routed::ByRoute,
        }
    }

    /// The side named by a valid cookie in the request's `Cookie` headers, if any.
    fn cookie_side(&self, headers: &HeaderMap) -> Option<Side> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == self.cookie)
            .and_then(|(_, value)| {
                let value = value.trim();
                [Side::Stable, Side::Canary]
                    .into_iter()
                    .find(|&side| self.values[side as usize] == value)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(share: &str) -> Split {
        Split::new(
            &CanaryRoute {
                backends: Vec::new(),
                share: share.parse().unwrap(),
                cookie: "cutover_canary".to_owned(),
                header: "x-cutover-canary".to_owned(),
            },
            b"test key",
        )
    }

    fn canary_count(split: &Split, requests: usize) -> usize {
        (0..requests)
            .filter(|_| split.side(&HeaderMap::new()).side == Side::Canary)
            .count()
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let cookie = format!("a=b; cutover_canary={value}");
        headers.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        headers
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
    fn the_header_pins_to_the_canary_apart_and_new_clients_get_a_signed_cookie() {
        let s = split("1%");
        let mut headers = HeaderMap::new();
        headers.insert("x-cutover-canary", HeaderValue::from_static("1"));
        let pinned = s.side(&headers);
        assert_eq!((pinned.side, pinned.routed), (Side::Canary, Routed::Pinned));
        // Turns: the 100th new client of a 1% split is the first on the canary.
        let choices: Vec<Choice> = (0..100).map(|_| s.side(&HeaderMap::new())).collect();
        assert_eq!(choices[0].side, Side::Stable);
        let stable = choices[0].cookie.as_ref().unwrap().to_str().unwrap();
        assert!(stable.starts_with("cutover_canary=stable."), "{stable}");
        assert!(
            stable.ends_with("; Path=/; HttpOnly; SameSite=Lax"),
            "{stable}"
        );
        assert_eq!(choices[99].side, Side::Canary);
        let canary = choices[99].cookie.as_ref().unwrap().to_str().unwrap();
        let value = canary.split(';').next().unwrap().split_once('=').unwrap().1;
        // The cookie it gave keeps the client on its side, judged like any routed request.
        let sticky = s.side(&with_cookie(value));
        assert_eq!(
            sticky,
            Choice {
                side: Side::Canary,
                cookie: None,
                routed: Routed::ByRoute
            }
        );
    }

    #[test]
    fn a_forged_cookie_counts_as_none() {
        let s = split("1%");
        for forged in ["canary", "canary.000000000000000000000000", "stable"] {
            let choice = s.side(&with_cookie(forged));
            assert!(choice.cookie.is_some(), "{forged}: treated as a new client");
        }
        // Another proxy's key makes another MAC.
        let other = Split::new(
            &CanaryRoute {
                backends: Vec::new(),
                share: "100%".parse().unwrap(),
                cookie: "cutover_canary".to_owned(),
                header: "x-cutover-canary".to_owned(),
            },
            b"another key",
        );
        assert_ne!(other.values, s.values);
    }
}
