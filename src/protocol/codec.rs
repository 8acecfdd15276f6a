//! Frames on the control socket: a `u32` big-endian length, then that many bytes of JSON.
//!
//! Both sides enforce [`MAX_FRAME`] on read and on write, so a confused or hostile peer can never
//! make the other allocate without bound, and a frame that is too big fails where it is made
//! rather than as a mystery on the other side. Reads that wait on a peer take a timeout wherever a
//! prompt answer is expected (the handshake, the request after it).

use std::io;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame either side sends or accepts: far above any real message (a status report
/// of many apps is a few KiB), far below what could hurt the supervisor.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer closed the connection in the middle of a frame")]
    Truncated,
    #[error(
        "frame of {len} bytes is over the {max} byte limit: the peer is not a matching cutover or \
         is misbehaving"
    )]
    TooLarge { len: usize, max: usize },
    #[error(
        "no frame arrived within {0:?}: the peer is stuck or does not speak the cutover protocol"
    )]
    Timeout(Duration),
    #[error("malformed frame: {0}: the peer is not a matching cutover")]
    Decode(#[source] serde_json::Error),
    #[error("could not encode a frame: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("control socket i/o failed: {0}")]
    Io(#[source] io::Error),
}

/// Reads one frame and decodes it as `T`, waiting as long as it takes.
///
/// A peer that closes the connection between frames gives [`FrameError::Closed`]; one that closes
/// inside a frame gives [`FrameError::Truncated`].
pub async fn read_frame<T, R>(reader: &mut R) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; 4];
    // Read the first byte on its own: EOF here is a clean close, anywhere later a truncation.
    match reader.read(&mut len[..1]).await {
        Ok(0) => return Err(FrameError::Closed),
        Ok(_) => {}
        Err(err) => return Err(io_error(err)),
    }
    reader.read_exact(&mut len[1..]).await.map_err(io_error)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.map_err(io_error)?;
    serde_json::from_slice(&body).map_err(FrameError::Decode)
}

/// [`read_frame`] with a deadline: the whole frame must arrive within `timeout`.
pub async fn read_frame_within<T, R>(reader: &mut R, timeout: Duration) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    tokio::time::timeout(timeout, read_frame(reader))
        .await
        .unwrap_or(Err(FrameError::Timeout(timeout)))
}

/// Encodes `message` and writes it as one frame, then flushes.
pub async fn write_frame<T, W>(writer: &mut W, message: &T) -> Result<(), FrameError>
where
    T: Serialize + ?Sized,
    W: AsyncWrite + Unpin,
{
    let frame = encode(message)?;
    writer.write_all(&frame).await.map_err(io_error)?;
    writer.flush().await.map_err(io_error)
}

/// The bytes of one frame (length prefix included), refused when over [`MAX_FRAME`].
pub fn encode<T: Serialize + ?Sized>(message: &T) -> Result<Vec<u8>, FrameError> {
    // Reserve the prefix up front so the frame goes out in a single write.
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, message).map_err(FrameError::Encode)?;
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    // Cannot truncate: MAX_FRAME is far below u32::MAX.
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

fn io_error(err: io::Error) -> FrameError {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::*;

    async fn roundtrip<T>(message: &T) -> T
    where
        T: Serialize + DeserializeOwned,
    {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        write_frame(&mut a, message).await.expect("write");
        read_frame(&mut b).await.expect("read")
    }

    #[tokio::test]
    async fn every_response_variant_reads_back_as_written() {
        // Regression: `Response` once used `kind` as its tag, which `ErrorReply` also has.
        let responses = vec![
            Response::Progress(Progress {
                app: "shop".into(),
                message: "starting 2 instances".into(),
            }),
            Response::Deployed(DeployOutcome {
                app: "shop".into(),
                version: "1.4.2".into(),
                previous: Some("1.4.1".into()),
            }),
            Response::Status(StatusReport::default()),
            Response::Stopped(StopOutcome {
                app: "shop".into(),
                stopped: 2,
            }),
            Response::Error(ErrorReply {
                kind: ErrorKind::NotFound,
                message: "no app named shop".into(),
            }),
        ];
        for response in responses {
            assert_eq!(roundtrip(&response).await, response);
        }
        let request = Request::Rollback(RollbackRequest {
            app: "shop".into(),
            version: None,
        });
        assert_eq!(roundtrip(&request).await, request);
    }

    #[tokio::test]
    async fn an_oversize_length_is_refused_before_reading_the_body() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let len = (MAX_FRAME as u32 + 1).to_be_bytes();
        a.write_all(&len).await.unwrap();
        let err = read_frame::<Hello, _>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn an_oversize_message_is_refused_on_write() {
        let huge = "x".repeat(MAX_FRAME + 1);
        let err = encode(&huge).unwrap_err();
        assert!(err.to_string().contains("over the"), "{err}");
    }

    #[tokio::test]
    async fn a_close_between_frames_differs_from_one_inside_a_frame() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert!(matches!(
            read_frame::<Hello, _>(&mut b).await,
            Err(FrameError::Closed)
        ));

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 10, b'{']).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame::<Hello, _>(&mut b).await,
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let (_a, mut b) = tokio::io::duplex(64);
        let err = read_frame_within::<Hello, _>(&mut b, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Timeout(_)), "{err}");
    }
}
