//! The client side of the control socket, used by the agent and the CLI verbs.
//!
//! One connection carries one request: connect (handshake included), then [`Client::request`],
//! which streams the progress lines of a rollout to a callback and returns the final response.
//! Errors say what the operator should do: the usual one is "no supervisor listening".

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::net::UnixStream;

use super::codec::{self, FrameError};
use super::messages::{
    ErrorKind, Hello, HelloReply, Progress, Request, Response, PROTOCOL_VERSION,
};

/// How long connecting and the handshake may take: a live supervisor answers at once.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a quick question (status, releases, logs) may wait for its answer. Deploy, rollback
/// and stop have no such limit: they end within the app's own deadlines, which the supervisor
/// enforces, and a supervisor that dies meanwhile closes the socket, which ends the wait.
pub const QUICK_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// An open, handshaken connection to the supervisor.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    socket: PathBuf,
    supervisor: String,
}

/// Why talking to the supervisor failed; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no supervisor listening on {}: start it with `cutover supervise`", .socket.display())]
    NotRunning { socket: PathBuf },
    #[error(
        "permission denied on the control socket {}: run this as the supervisor's user or root",
        .socket.display()
    )]
    PermissionDenied { socket: PathBuf },
    #[error("could not connect to the supervisor on {}: {source}", .socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the supervisor on {} did not {what} within {after:?}: it may be stuck, check its log",
        .socket.display()
    )]
    Timeout {
        socket: PathBuf,
        what: &'static str,
        after: Duration,
    },
    #[error(
        "protocol mismatch: this cutover speaks protocol {ours}, the supervisor on {} ({supervisor}) \
         speaks {theirs}: run the same cutover version for both",
        .socket.display()
    )]
    ProtocolMismatch {
        socket: PathBuf,
        ours: u32,
        theirs: u32,
        supervisor: String,
    },
    /// The supervisor answered the connection with an error in place of the handshake (its
    /// peer-uid check does): `kind` says why, and the CLI exits with that kind's code.
    #[error("the supervisor on {} refused this connection: {message}", .socket.display())]
    Refused {
        socket: PathBuf,
        kind: ErrorKind,
        message: String,
    },
    #[error(
        "the supervisor on {} closed the connection before answering: it may have stopped or \
         crashed, check its log and `cutover status`",
        .socket.display()
    )]
    Closed { socket: PathBuf },
    #[error("talking to the supervisor on {}: {source}", .socket.display())]
    Frame {
        socket: PathBuf,
        #[source]
        source: FrameError,
    },
}

/// The first frame from the supervisor: a handshake reply, or a refusal sent in its place.
#[derive(Deserialize)]
#[serde(untagged)]
enum HandshakeAnswer {
    Reply(HelloReply),
    Refused(Response),
}

impl Client {
    /// Connects to the supervisor on `socket` and exchanges the protocol handshake.
    pub async fn connect(socket: &Path) -> Result<Client, ClientError> {
        let socket = socket.to_path_buf();
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&socket)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return Err(connect_error(socket, err)),
            Err(_) => {
                return Err(ClientError::Timeout {
                    socket,
                    what: "accept the connection",
                    after: CONNECT_TIMEOUT,
                })
            }
        };
        let mut client = Client {
            stream,
            socket,
            supervisor: String::new(),
        };
        client.handshake().await?;
        Ok(client)
    }

    /// The supervisor's name and version, as it gave them in the handshake.
    pub fn supervisor(&self) -> &str {
        &self.supervisor
    }

    /// Sends `request`, hands each progress line to `on_progress` as it arrives and returns the
    /// final response (which may be `Response::Error`: errors travel as data).
    pub async fn request(
        mut self,
        request: &Request,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<Response, ClientError> {
        codec::write_frame(&mut self.stream, request)
            .await
            .map_err(|e| self.frame_error(e))?;
        let limit = match request {
            Request::Deploy(_) | Request::Rollback(_) | Request::Stop(_) => None,
            Request::Status(_)
            | Request::Releases(_)
            | Request::Logs(_)
            | Request::Promote(_)
            | Request::Abort(_) => Some(QUICK_ANSWER_TIMEOUT),
        };
        loop {
            let frame = match limit {
                Some(limit) => codec::read_frame_within(&mut self.stream, limit).await,
                None => codec::read_frame(&mut self.stream).await,
            };
            match frame {
                Ok(Response::Progress(progress)) => on_progress(&progress),
                Ok(response) => return Ok(response),
                Err(FrameError::Timeout(after)) => {
                    return Err(ClientError::Timeout {
                        socket: self.socket,
                        what: "answer",
                        after,
                    })
                }
                Err(err) => return Err(self.frame_error(err)),
            }
        }
    }

    async fn handshake(&mut self) -> Result<(), ClientError> {
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            client: concat!("cutover ", env!("CARGO_PKG_VERSION")).to_owned(),
        };
        // A supervisor that refuses this peer answers and closes without reading the hello, so
        // a failed write is not the end: its answer may already be waiting to be read.
        let sent = codec::write_frame(&mut self.stream, &hello).await;
        let answer =
            codec::read_frame_within::<HandshakeAnswer, _>(&mut self.stream, CONNECT_TIMEOUT).await;
        let reply = match (answer, sent) {
            (Ok(HandshakeAnswer::Reply(reply)), _) => reply,
            (Ok(HandshakeAnswer::Refused(Response::Error(err))), _) => {
                return Err(ClientError::Refused {
                    socket: self.socket.clone(),
                    kind: err.kind,
                    message: err.message,
                })
            }
            (Ok(HandshakeAnswer::Refused(other)), _) => {
                return Err(
                    self.frame_error(FrameError::Decode(serde::de::Error::custom(format!(
                        "expected a handshake reply, got {other:?}"
                    )))),
                )
            }
            (Err(FrameError::Timeout(after)), _) => {
                return Err(ClientError::Timeout {
                    socket: self.socket.clone(),
                    what: "answer the handshake",
                    after,
                })
            }
            (Err(_), Err(write_err)) => return Err(self.frame_error(write_err)),
            (Err(read_err), Ok(())) => return Err(self.frame_error(read_err)),
        };
        if !reply.accepted || reply.protocol != PROTOCOL_VERSION {
            return Err(ClientError::ProtocolMismatch {
                socket: self.socket.clone(),
                ours: PROTOCOL_VERSION,
                theirs: reply.protocol,
                supervisor: reply.supervisor,
            });
        }
        self.supervisor = reply.supervisor;
        Ok(())
    }

    fn frame_error(&self, err: FrameError) -> ClientError {
        let socket = self.socket.clone();
        match err {
            FrameError::Closed | FrameError::Truncated => ClientError::Closed { socket },
            FrameError::Io(ref io) if is_disconnect(io) => ClientError::Closed { socket },
            source => ClientError::Frame { socket, source },
        }
    }
}

impl ClientError {
    /// The exit code of a CLI verb that ends with this error: a protocol mismatch and a refusal
    /// (the peer-uid check's, exit 7) have their own, as when the supervisor reports them after
    /// the handshake; every other connection failure is 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::ProtocolMismatch { .. } => ErrorKind::ProtocolMismatch.exit_code(),
            ClientError::Refused { kind, .. } => kind.exit_code(),
            _ => 1,
        }
    }
}

fn connect_error(socket: PathBuf, err: io::Error) -> ClientError {
    match err.kind() {
        // No socket file, or a file nobody listens on (a supervisor that died uncleanly).
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning { socket }
        }
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { socket },
        _ => ClientError::Connect {
            socket,
            source: err,
        },
    }
}

fn is_disconnect(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{StatusRequest, StopRequest};
    use tokio::net::UnixListener;

    /// A stand-in supervisor that accepts one client, answers its hello, reads its request and
    /// then does whatever `script` says.
    async fn fake_supervisor<F, Fut>(script: F) -> (tempfile::TempDir, PathBuf)
    where
        F: FnOnce(UnixStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _hello: Hello = codec::read_frame(&mut stream).await.unwrap();
            let reply = HelloReply {
                protocol: PROTOCOL_VERSION,
                supervisor: "fake".into(),
                accepted: true,
            };
            codec::write_frame(&mut stream, &reply).await.unwrap();
            let _request: Request = codec::read_frame(&mut stream).await.unwrap();
            script(stream).await;
        });
        (dir, socket)
    }

    #[tokio::test]
    async fn progress_streams_to_the_callback_before_the_answer() {
        let (_dir, socket) = fake_supervisor(|mut stream| async move {
            for message in ["starting", "healthy"] {
                let progress = Response::Progress(Progress {
                    app: "shop".into(),
                    message: message.into(),
                });
                codec::write_frame(&mut stream, &progress).await.unwrap();
            }
            let done = Response::Stopped(crate::protocol::StopOutcome {
                app: "shop".into(),
                stopped: 1,
            });
            codec::write_frame(&mut stream, &done).await.unwrap();
        })
        .await;
        let client = Client::connect(&socket).await.unwrap();
        assert_eq!(client.supervisor(), "fake");
        let mut seen = Vec::new();
        let request = Request::Stop(StopRequest { app: "shop".into() });
        let answer = client
            .request(&request, |p| seen.push(p.message.clone()))
            .await
            .unwrap();
        assert_eq!(seen, ["starting", "healthy"]);
        assert!(matches!(answer, Response::Stopped(_)), "{answer:?}");
    }

    #[tokio::test]
    async fn a_supervisor_that_dies_mid_stream_is_a_clear_error() {
        let (_dir, socket) = fake_supervisor(|mut stream| async move {
            let progress = Response::Progress(Progress {
                app: "shop".into(),
                message: "starting".into(),
            });
            codec::write_frame(&mut stream, &progress).await.unwrap();
            // Dropping the stream is what a crash looks like from the client.
        })
        .await;
        let client = Client::connect(&socket).await.unwrap();
        let request = Request::Status(StatusRequest { app: None });
        let err = client.request(&request, |_| {}).await.unwrap_err();
        assert!(matches!(err, ClientError::Closed { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("closed the connection before answering"));
    }
}
