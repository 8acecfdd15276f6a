//! TCP mode (`app.mode: tcp`): each client connection is piped whole to one instance, for apps
//! that do not speak HTTP. The route, the canary split (by connection), the counters and
//! draining are the HTTP proxy's: a connection counts as one request and stays in flight until
//! it closes, so a drain waits for it up to its deadline and then cuts it.

use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use tokio::net::TcpStream;

use super::backend::InFlight;
use super::client::Conn;
use super::forward::{next_backend, sides};
use super::{Hold, Shared, Side};

/// Pipes `client` to an instance of the route until either side closes or a drain cuts it.
pub(super) async fn pipe(shared: Arc<Shared>, worker: usize, mut client: TcpStream) {
    let lane = shared.lane(worker);
    let mut table = lane.route.load_full();
    let mut hold = Hold::default();
    // Connections take turns by weight; there is no cookie or header to read at this layer.
    let side = match &table.split {
        Some(split) if table.stable < table.backends.len() => split.side(&HeaderMap::new()).0,
        _ => Side::Stable,
    };
    let mut tried = 0u64;
    loop {
        let [first, second] = sides(&table, side);
        let Some(index) = next_backend(&table, lane, [&first, &second], &mut tried) else {
            // Within the hold, wait for a route with an instance that may take it.
            match shared.rerouted(worker, &table, &mut hold).await {
                Some(routed) => {
                    table = routed;
                    tried = 0;
                    continue;
                }
                None => {
                    tracing::debug!("no instance took the connection: closing it");
                    return;
                }
            }
        };
        let state = &table.backends[index];
        let started = Instant::now();
        let mut backend = match Conn::connect(state.backend.addr).await {
            Ok(conn) => conn,
            Err(err) => {
                state.record_failed_connect(worker);
                tracing::debug!(backend = %state.backend.id, "connect failed, trying another: {err}");
                continue;
            }
        };
        let _in_flight = InFlight::new(table.clone(), index, worker);
        state.record(worker, 200, started.elapsed());
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut client, &mut backend.io) => {
                if let Err(err) = result {
                    tracing::debug!(backend = %state.backend.id, "connection ended: {err}");
                }
            }
            _ = state.cut_of(worker).cancelled() => {
                tracing::debug!(backend = %state.backend.id, "connection cut by drain");
            }
        }
        return;
    }
}
