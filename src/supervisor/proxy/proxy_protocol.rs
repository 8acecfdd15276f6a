//! The PROXY protocol (v1 text, v2 binary) that a load balancer in front may put before each
//! connection's first byte, telling the client's real address (`app.proxy_protocol: true`).
//!
//! The header is read exactly, never past its end, so what follows goes to the HTTP server
//! untouched: v1 a byte at a time up to its line feed (at most 107 bytes), v2 as its 16-byte
//! prefix and then the length that prefix gives. `ppp` checks and decodes it.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use ppp::{v1, v2, HeaderResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a connection may take to send its header before it is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest v1 header (the protocol's own limit).
const V1_MAX: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads the connection's PROXY header; the client's address it names, `None` for a header
/// without one (`UNKNOWN`, `LOCAL`: a health check of the balancer itself).
pub(super) async fn read_header(stream: &mut TcpStream) -> io::Result<Option<IpAddr>> {
    tokio::time::timeout(HEADER_TIMEOUT, read(stream))
        .await
        .map_err(|_| invalid(format!("no PROXY header within {HEADER_TIMEOUT:?}")))?
}

async fn read(stream: &mut TcpStream) -> io::Result<Option<IpAddr>> {
    let mut header = vec![0u8; V1_PREFIX.len()];
    stream.read_exact(&mut header).await?;
    if header == V1_PREFIX {
        while header.last() != Some(&b'\n') {
            if header.len() >= V1_MAX {
                return Err(invalid("a PROXY v1 header longer than 107 bytes".into()));
            }
            header.push(stream.read_u8().await?);
        }
    } else if V2_SIGNATURE.starts_with(&header) {
        header.resize(16, 0);
        stream.read_exact(&mut header[V1_PREFIX.len()..]).await?;
        let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
        header.resize(16 + length, 0);
        stream.read_exact(&mut header[16..]).await?;
    } else {
        return Err(invalid(
            "the connection does not start with a PROXY header".into(),
        ));
    }
    client_of(&header)
}

/// The client's address in a complete header.
fn client_of(header: &[u8]) -> io::Result<Option<IpAddr>> {
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some(a.source_address.into()),
            v1::Addresses::Tcp6(a) => Some(a.source_address.into()),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match h.addresses {
            v2::Addresses::IPv4(a) => Some(a.source_address.into()),
            v2::Addresses::IPv6(a) => Some(a.source_address.into()),
            v2::Addresses::Unix(_) | v2::Addresses::Unspecified => None,
        }),
        HeaderResult::V1(Err(e)) => Err(invalid(format!("a bad PROXY v1 header: {e}"))),
        HeaderResult::V2(Err(e)) => Err(invalid(format!("a bad PROXY v2 header: {e}"))),
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_name_the_client() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n";
        assert_eq!(client_of(v1).unwrap(), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(client_of(b"PROXY UNKNOWN\r\n").unwrap(), None);
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x15, 0xb3, 0, 80,
        ]);
        assert_eq!(
            client_of(&v2).unwrap(),
            Some("198.51.100.9".parse().unwrap())
        );
        assert!(client_of(b"PROXY TCP4 nonsense\r\n").is_err());
    }
}
