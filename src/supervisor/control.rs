//! The control socket's server side: accepts connections, checks who is calling, runs the
//! handshake and hands one request per connection to the apps, streaming progress back.
//!
//! Every connection gets its own task and every request its own task again, so the accept loop
//! never waits on a rollout, and a client that disconnects (or stops reading) mid-deploy does not
//! abort the deploy: the request runs to its end, and only the forwarding of its progress stops.

use std::future::Future;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::apps::Apps;
use crate::protocol::codec::{self, FrameError};
use crate::protocol::{
    ErrorKind, ErrorReply, Hello, HelloReply, Request, Response, PROTOCOL_VERSION,
};

/// How long a client may take to send its hello, and then its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one frame to the client may take to go out; a client that does not read for this
/// long is treated as gone, and the request carries on without it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connections still open at shutdown (a `status`, a hand-over's last requests) get to
/// finish before they are closed: a CLI call in flight at a restart gets its answer.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Progress lines buffered between a request and its connection.
const PROGRESS_BUFFER: usize = 64;

const SUPERVISOR: &str = concat!("cutover ", env!("CARGO_PKG_VERSION"));

/// Accepts connections on `listener` until `shutdown` completes; connections still open then get
/// [`CLOSE_GRACE`] to finish and are closed after it (their requests' own tasks are left to the
/// apps' shutdown).
pub async fn serve(listener: UnixListener, apps: Apps, shutdown: impl Future<Output = ()>) {
    let owner = nix::unistd::geteuid().as_raw();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        if let Some(path) = addr.as_pathname() {
            tracing::info!("supervisor listening on {}", path.display());
        }
    }
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, apps.clone(), owner));
                }
                // Running out of file descriptors must not end the supervisor: log, and pause
                // briefly so a persistent error does not spin.
                Err(err) => {
                    tracing::error!("accepting a control connection failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let finished = tokio::time::timeout(CLOSE_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::info!(
            "closing {} control connection(s) still open {CLOSE_GRACE:?} after the shutdown began",
            connections.len()
        );
    }
    connections.shutdown().await;
}

/// One connection: peer check, handshake, one request, its progress and its answer.
async fn connection(mut stream: UnixStream, apps: Apps, owner: u32) {
    let peer = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(err) => {
            tracing::warn!("control connection without peer credentials, closing it: {err}");
            return;
        }
    };
    let (uid, pid) = (peer.uid(), peer.pid().unwrap_or(0));
    // The owner of the supervisor and root may drive it; anyone else could deploy code as the
    // owner, so they are refused even if the socket's permissions were loosened by hand.
    if uid != owner && uid != 0 {
        tracing::warn!("refused a control connection from uid {uid} (pid {pid}): only uid {owner} and root may use this supervisor");
        let refusal = Response::Error(ErrorReply {
            kind: ErrorKind::Forbidden,
            message: format!(
                "uid {uid} may not use this supervisor: it belongs to uid {owner} (root may use it too)"
            ),
        });
        let _ = send(&mut stream, &refusal).await;
        return;
    }

    let hello: Hello = match codec::read_frame_within(&mut stream, CLIENT_TIMEOUT).await {
        Ok(hello) => hello,
        // A bare connect-and-close is how scripts (and `bind_socket`) probe for a live supervisor.
        Err(FrameError::Closed) => return,
        Err(err) => {
            tracing::warn!("control connection from pid {pid}: no valid hello: {err}");
            return;
        }
    };
    let accepted = hello.protocol == PROTOCOL_VERSION;
    let reply = HelloReply {
        protocol: PROTOCOL_VERSION,
        supervisor: SUPERVISOR.to_owned(),
        accepted,
    };
    if send(&mut stream, &reply).await.is_err() || !accepted {
        if !accepted {
            tracing::warn!(
                "refused {} (pid {pid}): it speaks protocol {}, this supervisor {PROTOCOL_VERSION}",
                hello.client,
                hello.protocol
            );
        }
        return;
    }

    let request: Request = match codec::read_frame_within(&mut stream, CLIENT_TIMEOUT).await {
        Ok(request) => request,
        // Answer what can be answered, so the client shows a reason rather than a hang-up.
        Err(err @ (FrameError::Decode(_) | FrameError::TooLarge { .. })) => {
            tracing::warn!("control connection from pid {pid}: refused its request: {err}");
            let answer = Response::Error(ErrorReply {
                kind: ErrorKind::BadRequest,
                message: format!("unreadable request: {err}"),
            });
            let _ = send(&mut stream, &answer).await;
            return;
        }
        Err(err) => {
            tracing::warn!("control connection from pid {pid}: no request: {err}");
            return;
        }
    };
    tracing::debug!("{} (pid {pid}) asks: {request:?}", hello.client);
    answer(stream, apps, request).await;
}

/// Runs `request` in its own task and forwards its progress, then its response, to `stream`.
async fn answer(mut stream: UnixStream, apps: Apps, request: Request) {
    let (progress_tx, mut progress_rx) = mpsc::channel(PROGRESS_BUFFER);
    // Its own task: dropping this connection (client gone, supervisor shutting down) must never
    // cancel a rollout half-way.
    let mut handling = tokio::spawn(async move { apps.handle(request, progress_tx).await });
    let mut client_gone = false;
    let response = loop {
        tokio::select! {
            // Progress first, so every line sent before the answer goes out before it.
            biased;
            Some(progress) = progress_rx.recv() => {
                if !client_gone && send(&mut stream, &Response::Progress(progress)).await.is_err() {
                    tracing::info!("the client left; the request carries on without it");
                    client_gone = true;
                }
            }
            joined = &mut handling => break joined,
        }
    };
    let response = match response {
        Ok(response) => response,
        Err(err) => {
            tracing::error!("a control request failed inside the supervisor: {err}");
            Response::Error(ErrorReply {
                kind: ErrorKind::Internal,
                message: format!(
                    "the supervisor failed while handling this request ({err}): see its log"
                ),
            })
        }
    };
    if client_gone {
        return;
    }
    // Lines sent just before the answer may still sit in the channel.
    while let Ok(progress) = progress_rx.try_recv() {
        if send(&mut stream, &Response::Progress(progress))
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = send(&mut stream, &response).await;
}

/// Writes one frame within [`WRITE_TIMEOUT`]; any failure means the client is gone.
async fn send<T: serde::Serialize>(stream: &mut UnixStream, message: &T) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, codec::write_frame(stream, message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            tracing::debug!("writing to a control client failed: {err}");
            Err(())
        }
        Err(_) => Err(()),
    }
}
