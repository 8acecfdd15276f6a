//! TCP mode (`app.mode: tcp`): each client connection is piped whole to one instance, for apps
//! that do not speak HTTP. The route, the canary split (by connection), the counters and
//! draining are the HTTP proxy's: a connection counts as one request and stays in flight until
//! it closes, so a drain waits for it up to its deadline and then cuts it.
//!
//! What a canary is judged on, per connection: its latency is the time to the instance's first
//! byte (from the connect, or from the client's first byte when that came later, so a client's
//! own pause is not counted), and it is an error when the instance closes or resets it without a
//! byte after the client spoke — as a 5xx is in HTTP mode. A connection nobody said a word on
//! is counted, but not judged.

use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::downstream;
use super::route::{next_backend, sides, BackendState, Hold, InFlight, Routed, Side, Slot};
use super::state::ProxyState;
use super::upstream;

/// The buffers for the bytes before the instance's first answer (then `copy` takes over).
const FIRST_READ: usize = 8 * 1024;

/// Pipes `client` to an instance of the route until either side closes, a drain cuts it, or the
/// proxy's close does at its deadline (`downstream_conn` is the connection as the proxy's
/// downstream side counts it).
pub(super) async fn pipe(
    proxy: Arc<ProxyState>,
    worker: usize,
    mut client: TcpStream,
    downstream_conn: Arc<downstream::Conn>,
) {
    // TCP mode never shares its address: the one app there.
    let sites = proxy.sites(worker).table.load_full();
    let Some(proxy) = sites.first() else {
        return;
    };
    let lane = proxy.lane(worker);
    let mut table = lane.table.load_full();
    let mut hold = Hold::default();
    // Connections take turns by weight; there is no cookie or header to read at this layer.
    let side = match &table.split {
        Some(split) if table.stable_count < table.backends.len() => {
            split.side(&HeaderMap::new()).side
        }
        _ => Side::Stable,
    };
    let mut tried = 0u64;
    loop {
        let [first, second] = sides(&table, side);
        let Some(index) = next_backend(&table, lane, [&first, &second], &mut tried) else {
            // Within the hold, wait for a route with an instance that may take it.
            match proxy.rerouted(worker, &table, &mut hold).await {
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
        let slot = table.slot_of(index);
        let started = Instant::now();
        let mut backend = match upstream::Conn::connect(state.backend.addr).await {
            Ok(conn) => conn,
            Err(err) => {
                state.record_failed_connect(worker, slot);
                tracing::debug!(backend = %state.backend.id, "connect failed, trying another: {err}");
                continue;
            }
        };
        let _in_flight = InFlight::new(table.clone(), index, worker);
        tokio::select! {
            result = relay(&mut client, &mut backend.io, state, (worker, slot), started) => {
                if let Err(err) = result {
                    tracing::debug!(backend = %state.backend.id, "connection ended: {err}");
                }
            }
            _ = state.cut_of(worker).cancelled() => {
                tracing::debug!(backend = %state.backend.id, "connection cut by drain");
            }
            () = downstream_conn.cut() => {
                tracing::debug!(backend = %state.backend.id, "connection cut at the proxy's close deadline");
            }
        }
        return;
    }
}

/// Copies bytes both ways until either side closes, recording the connection in `state`'s
/// counters when the instance first answers or gives up (see the module's notes).
async fn relay(
    client: &mut TcpStream,
    instance: &mut TcpStream,
    state: &BackendState,
    (worker, slot): (usize, Slot),
    connected: Instant,
) -> std::io::Result<()> {
    let (mut asking, mut answer) = (vec![0u8; FIRST_READ], vec![0u8; FIRST_READ]);
    // When the instance had something to answer: the connect, or the client's first byte.
    let mut asked: Option<Instant> = None;
    let mut client_done = false;
    loop {
        tokio::select! {
            read = client.read(&mut asking), if !client_done => {
                let n = read?;
                if n == 0 {
                    client_done = true;
                    instance.shutdown().await?;
                    continue;
                }
                asked.get_or_insert_with(Instant::now);
                if let Err(err) = instance.write_all(&asking[..n]).await {
                    state.record_broken(worker, Routed::ByRoute, slot);
                    return Err(err);
                }
            }
            read = instance.read(&mut answer) => match read {
                Ok(n) if n > 0 => {
                    let since = asked.unwrap_or(connected);
                    state.record(worker, Routed::ByRoute, slot, 200, since.elapsed());
                    client.write_all(&answer[..n]).await?;
                    break;
                }
                ended => {
                    if asked.is_some() {
                        state.record_broken(worker, Routed::ByRoute, slot);
                    } else {
                        state.record_quiet(worker, slot);
                    }
                    return ended.map(drop);
                }
            },
        }
    }
    drop((asking, answer));
    if client_done {
        tokio::io::copy(instance, client).await?;
    } else {
        tokio::io::copy_bidirectional(client, instance).await?;
    }
    Ok(())
}
