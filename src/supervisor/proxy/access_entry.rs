//! One request's access-log line in the making: begun when its worker picks the request up (only
//! when the route it read has an access log: with the log off, a request makes none), told which
//! instance it went to, finished with the response's status, and written when the response
//! body is done (or at once for the proxy's own short answers).
//!
//! It holds the worker's own copy of the route (whose reference count only that worker writes),
//! not the log itself: the log is shared by every worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::{Method, Uri};

use super::access_line::Line;
use super::route::Table;

/// The status of a request whose client went away before it was answered (nginx's 499).
const CLIENT_CLOSED: u16 = 499;

/// A request on its way, as its access-log line will say it.
#[derive(Debug)]
pub(super) struct Entry {
    /// The route the request was picked from; it has the log, and `picked` is an index of it.
    table: Arc<Table>,
    picked: Option<usize>,
    worker: usize,
    started: Instant,
    method: Method,
    /// Path and query, as the client sent them.
    path: String,
    request_id: HeaderValue,
    client: HeaderValue,
    status: u16,
    bytes: u64,
}

/// What an entry is begun with.
#[derive(Debug)]
pub(super) struct Begin<'a> {
    pub worker: usize,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub request_id: &'a HeaderValue,
    pub client: &'a HeaderValue,
}

impl Entry {
    /// An entry for a request read from `table`; only made when the table has an access log.
    pub fn begin(table: &Arc<Table>, begin: Begin<'_>) -> Box<Entry> {
        Box::new(Entry {
            table: table.clone(),
            picked: None,
            worker: begin.worker,
            started: Instant::now(),
            method: begin.method.clone(),
            // A CONNECT's target is an authority, not a path: logged as it came.
            path: begin
                .uri
                .path_and_query()
                .map_or_else(|| begin.uri.to_string(), |path| path.as_str().to_owned()),
            request_id: begin.request_id.clone(),
            client: begin.client.clone(),
            status: CLIENT_CLOSED,
            bytes: 0,
        })
    }

    /// The request now goes to `table.backends[index]` (a held request may have waited for a
    /// new route).
    pub fn picked(&mut self, table: &Arc<Table>, index: usize) {
        if !Arc::ptr_eq(&self.table, table) {
            self.table = table.clone();
        }
        self.picked = Some(index);
    }

    /// The response's status.
    pub fn answered(&mut self, status: u16) {
        self.status = status;
    }

    /// Body bytes sent to the client.
    pub fn sent(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    fn duration(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let Some(log) = &self.table.access_log else {
            return;
        };
        let picked = self
            .picked
            .and_then(|i| Some((i, self.table.backends.get(i)?)));
        let line = Line {
            release: picked.map(|(_, state)| state.backend.version.as_str()),
            slot: picked.map(|(i, _)| {
                if i < self.table.stable_count {
                    "stable"
                } else {
                    "canary"
                }
            }),
            method: self.method.as_str(),
            path: &self.path,
            status: self.status,
            duration: self.duration(),
            bytes: self.bytes,
            request_id: self.request_id.as_bytes(),
            client: self.client.as_bytes(),
        };
        log.write(self.worker, &line);
    }
}
