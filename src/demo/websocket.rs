//! The demo app's WebSocket side (RFC 6455): the handshake's accept value, and an echo of frames
//! on the upgraded stream until a close frame or shutdown. `app` answers the upgrade on `/ws`.

use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
pub fn sec_websocket_accept(key: &[u8]) -> String {
    use base64::Engine;
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Echoes text and binary frames back unmasked, answers pings, and closes on a close frame or on
/// shutdown. Frames are echoed one by one, so fragmented messages come back fragmented alike.
pub async fn echo<S>(mut io: S, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut io) => frame?,
            // Once SIGTERM has been received (or the sender is gone); the block drops the
            // borrow `wait_for` returns, which must not be held across the write below.
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                io.write_all(&encode_frame(0x8, &[0x03, 0xe9])).await?; // 1001 going away
                return Ok(());
            }
        };
        let (opcode, payload) = frame;
        match opcode {
            0x8 => {
                io.write_all(&encode_frame(0x8, &payload)).await?;
                return Ok(());
            }
            0x9 => io.write_all(&encode_frame(0xA, &payload)).await?,
            0xA => {}
            _ => io.write_all(&encode_frame(opcode, &payload)).await?,
        }
    }
}

/// Reads one frame; returns its opcode (with the FIN bit folded into bit 7) and unmasked payload.
async fn read_frame<S: tokio::io::AsyncRead + Unpin + Send>(
    io: &mut S,
) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await?;
    let fin_opcode = head[0] & 0x8F;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7F {
        126 => u64::from(io.read_u16().await?),
        127 => io.read_u64().await?,
        n => u64::from(n),
    };
    // The demo only echoes small messages; a huge length is a broken or hostile peer.
    if len > 16 * 1024 * 1024 {
        return Err(std::io::Error::other("WebSocket frame larger than 16 MiB"));
    }
    let mut mask = [0u8; 4];
    if masked {
        io.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    io.read_exact(&mut payload).await?;
    if masked {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
    }
    // Control frames are matched without the FIN bit; data frames keep it for the echo.
    let opcode = fin_opcode & 0x0F;
    Ok((if opcode >= 0x8 { opcode } else { fin_opcode }, payload))
}

/// An unmasked frame, as a server sends it; `opcode` may carry the FIN bit (0x80) already.
pub fn encode_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let first = if opcode & 0x80 != 0 || opcode >= 0x8 {
        opcode | 0x80
    } else {
        opcode
    };
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(first);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            sec_websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_use_the_extended_length_forms() {
        assert_eq!(encode_frame(0x81, b"hi"), vec![0x81, 2, b'h', b'i']);
        assert_eq!(&encode_frame(0x82, &[0; 300])[..4], &[0x82, 126, 1, 44]);
    }
}
