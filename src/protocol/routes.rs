//! Which requests an app takes on a listen address it may share with other apps: its `hosts`
//! (exact names and `*.example.com` wildcards; none means any host, the address's catch-all)
//! and its optional `path_prefix`, as checked at deploy, and when two apps' routes collide.
//!
//! A request goes to the app whose host pattern fits its host best (an exact name before a
//! wildcard, a wildcard before any host), then, among those, to the longest path prefix that
//! fits its path. Two apps collide when they name the same pattern (or both take any host) with
//! the same prefix: no request could tell them apart.

use std::fmt;

/// One entry of `hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `example.com`: that name only.
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: one more label in front, as a certificate's
    /// wildcard means (`a.example.com`, not `example.com` nor `a.b.example.com`).
    Wildcard(String),
}

impl HostPattern {
    /// Parses one entry of `hosts` (lowercased; a port is not part of it).
    pub fn parse(entry: &str) -> Result<HostPattern, String> {
        // A trailing dot names the same host (fully qualified).
        let trimmed = entry.trim();
        let lower = trimmed
            .strip_suffix('.')
            .unwrap_or(trimmed)
            .to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "host {entry:?} is not a host name (write example.com or *.example.com, without scheme, port or path)"
            ));
        }
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }

    /// Whether `host` (lowercase, without port) is one this pattern names.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && !host[..host.len() - suffix.len()].contains('.')
            }
        }
    }

    /// How well a match fits: an exact name beats a wildcard (any host is 0).
    pub fn rank(&self) -> u8 {
        match self {
            HostPattern::Exact(_) => 2,
            HostPattern::Wildcard(_) => 1,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// An app's routes on its listen address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// Empty: any host (the catch-all).
    pub hosts: Vec<HostPattern>,
    /// `/api` (no trailing slash): `/api` and `/api/...`, not `/apix`. `None`: every path.
    pub path_prefix: Option<String>,
}

impl Routes {
    /// Parses an app's `hosts` and `path_prefix` (`name` for the messages).
    pub fn parse(
        name: &str,
        hosts: &[String],
        path_prefix: Option<&str>,
    ) -> Result<Routes, String> {
        let hosts = hosts
            .iter()
            .map(|h| HostPattern::parse(h).map_err(|why| format!("{why} (in hosts of {name})")))
            .collect::<Result<Vec<_>, _>>()?;
        let path_prefix = match path_prefix {
            None => None,
            Some(prefix) => {
                let ok = prefix.starts_with('/')
                    && !prefix.contains(['?', '#', ' '])
                    && !prefix.split('/').any(|s| s == "." || s == "..");
                if !ok {
                    return Err(format!(
                        "path_prefix {prefix:?} of {name} is not a path; write one like /api"
                    ));
                }
                let trimmed = prefix.trim_end_matches('/');
                (!trimmed.is_empty()).then(|| trimmed.to_owned())
            }
        };
        Ok(Routes { hosts, path_prefix })
    }

    /// Whether these are the defaults: any host, every path (what an address with one app has).
    pub fn is_catch_all(&self) -> bool {
        self.hosts.is_empty() && self.path_prefix.is_none()
    }

    /// How well these routes fit a request for `host` (lowercase, no port; `None`: the request
    /// named none) and `path`: `None` if they do not, else (host rank, prefix length), higher
    /// fitting better.
    pub fn fit(&self, host: Option<&str>, path: &str) -> Option<(u8, usize)> {
        let host_rank = if self.hosts.is_empty() {
            0
        } else {
            let host = host?;
            self.hosts
                .iter()
                .filter(|p| p.matches(host))
                .map(HostPattern::rank)
                .max()?
        };
        let prefix_len = match &self.path_prefix {
            None => 0,
            Some(prefix) => {
                let rest = path.strip_prefix(prefix.as_str())?;
                if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')) {
                    return None;
                }
                prefix.len()
            }
        };
        Some((host_rank, prefix_len))
    }

    /// Where `self` and `other` collide (the same pattern, or both any host, with the same
    /// prefix), said as the route they both claim; `None` if every request can tell them apart.
    pub fn collision(&self, other: &Routes) -> Option<String> {
        if self.path_prefix != other.path_prefix {
            return None;
        }
        let path = self.path_prefix.as_deref().unwrap_or("");
        if self.hosts.is_empty() && other.hosts.is_empty() {
            return Some(format!("any host{path}"));
        }
        self.hosts
            .iter()
            .find(|h| other.hosts.contains(h))
            .map(|h| format!("{h}{path}"))
    }
}

impl fmt::Display for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path_prefix.as_deref().unwrap_or("");
        if self.hosts.is_empty() {
            return write!(f, "any host{path}");
        }
        for (i, host) in self.hosts.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{host}{path}")?;
        }
        Ok(())
    }
}

/// The one line a deploy is refused with when `app` and `other` both claim `route` (as
/// [`Routes::collision`] says it) on one address.
pub fn collision_message(app: &str, other: &str, route: &str) -> String {
    format!(
        "{app} and {other} both take {route} on this address; give one of them other hosts or another path_prefix"
    )
}

/// The host a request names (its URI's authority, as HTTP/2 and absolute-form requests carry
/// it, else its `Host` header), without the port, and without a trailing dot.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a http::HeaderMap) -> Option<&'a str> {
    let raw = match uri.authority() {
        Some(authority) => authority.host(),
        None => headers.get(http::header::HOST)?.to_str().ok()?,
    };
    // An IPv6 literal keeps its brackets; a name loses its port.
    let host = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    Some(host.strip_suffix('.').unwrap_or(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(hosts: &[&str], prefix: Option<&str>) -> Routes {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        Routes::parse("t", &hosts, prefix).unwrap()
    }

    #[test]
    fn a_wildcard_names_one_more_label_as_a_certificate_does() {
        let w = HostPattern::parse("*.Example.com").unwrap();
        assert!(w.matches("a.example.com"));
        assert!(w.matches("A.EXAMPLE.COM"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("a.b.example.com"));
        assert!(!w.matches("aexample.com"));
        assert_eq!(w.to_string(), "*.example.com");
    }

    #[test]
    fn what_is_not_a_host_name_is_refused_with_the_fix() {
        for bad in [
            "",
            "https://example.com",
            "example.com:443",
            "a..b",
            "*.",
            "a.*.com",
            "-a.com",
        ] {
            let err = HostPattern::parse(bad).unwrap_err();
            assert!(err.contains("write example.com"), "{bad}: {err}");
        }
        let err = Routes::parse("web", &[], Some("api")).unwrap_err();
        assert!(err.contains("write one like /api"), "{err}");
    }

    #[test]
    fn exact_beats_wildcard_beats_any_host_then_the_longest_prefix() {
        let exact = routes(&["shop.example.com"], None);
        let wild = routes(&["*.example.com"], Some("/api"));
        let any = routes(&[], None);
        let host = Some("shop.example.com");
        assert!(exact.fit(host, "/api/x") > wild.fit(host, "/api/x"));
        assert!(wild.fit(host, "/api/x") > any.fit(host, "/api/x"));
        assert_eq!(wild.fit(Some("blog.example.com"), "/apix"), None);
        assert_eq!(wild.fit(Some("blog.example.com"), "/api?q=1"), Some((1, 4)));
        assert_eq!(exact.fit(None, "/"), None);
        assert_eq!(any.fit(None, "/"), Some((0, 0)));
        let deeper = routes(&["*.example.com"], Some("/api/v2/"));
        assert!(deeper.fit(host, "/api/v2/x") > wild.fit(host, "/api/v2/x"));
    }

    #[test]
    fn routes_collide_only_where_no_request_tells_them_apart() {
        let a = routes(&["a.example.com", "*.example.com"], None);
        let b = routes(&["*.Example.com"], None);
        assert_eq!(a.collision(&b).as_deref(), Some("*.example.com"));
        assert_eq!(a.collision(&routes(&["*.example.com"], Some("/api"))), None);
        assert_eq!(
            routes(&[], None).collision(&routes(&[], None)).as_deref(),
            Some("any host")
        );
        assert_eq!(routes(&[], Some("/a")).collision(&routes(&[], None)), None);
        assert_eq!(a.collision(&routes(&["b.example.org"], None)), None);
    }

    #[test]
    fn the_request_host_comes_without_port_from_the_uri_or_the_header() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, "Shop.example.com:8443".parse().unwrap());
        let origin: http::Uri = "/x".parse().unwrap();
        assert_eq!(request_host(&origin, &headers), Some("Shop.example.com"));
        let absolute: http::Uri = "https://b.example.com./x".parse().unwrap();
        assert_eq!(request_host(&absolute, &headers), Some("b.example.com"));
        headers.insert(http::header::HOST, "[::1]:80".parse().unwrap());
        assert_eq!(request_host(&origin, &headers), Some("[::1]"));
        assert_eq!(request_host(&origin, &http::HeaderMap::new()), None);
    }
}
