//! The admin address's pages: one line per path in [`ROUTES`]; the server answers 404 for every
//! other path. A new page (the dashboard, its `/api/…`) is a line here and a handler in a file
//! of its own beside this one.

use super::site::Handler;
use super::{dashboard, metrics};

/// Which request paths a route answers.
#[derive(Debug, Clone, Copy)]
pub enum Path {
    /// This path only.
    Exact(&'static str),
    /// Every path that starts with this prefix (give it with its trailing `/`).
    Under(&'static str),
}

/// Every page of the admin address, first match wins.
pub const ROUTES: &[(Path, Handler)] = &[
    (Path::Exact("/metrics"), metrics::handle),
    (Path::Exact("/"), dashboard::page),
    (Path::Exact("/dashboard.js"), dashboard::script),
    (Path::Exact("/dashboard.css"), dashboard::style),
    (Path::Exact("/api/status"), dashboard::status),
    (Path::Exact("/api/fleet"), dashboard::fleet),
];

/// The handler for `path`, if a route answers it.
pub fn find(path: &str) -> Option<Handler> {
    ROUTES
        .iter()
        .find(|(route, _)| match route {
            Path::Exact(exact) => path == *exact,
            Path::Under(prefix) => path.starts_with(prefix),
        })
        .map(|(_, handler)| *handler)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_is_served_and_nothing_else_by_accident() {
        assert!(find("/metrics").is_some());
        assert!(find("/metrics/").is_none());
        assert!(find("/metricsx").is_none());
        assert!(find("/nope").is_none());
    }
}
