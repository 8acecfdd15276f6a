//! HTTP/2 from clients, written frame by frame where a well-behaved client library would not
//! go: the limit on concurrent streams the proxy announces, and a client that opens and cancels
//! streams as fast as it can (the rapid-reset attack, CVE-2023-44487) is sent GOAWAY and cut off
//! while the proxy keeps serving others.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::setup::proxy_for;
use crate::support::load::DemoApp;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `GET /` for `a` in HPACK: `:method GET`, `:scheme http`, `:path /` from the static table,
/// `:authority` a literal.
const GET_ROOT: &[u8] = &[0x82, 0x86, 0x84, 0x41, 0x01, b'a'];

/// Reads frames until one of `kind` arrives; its payload, or `None` at the end of the stream.
async fn read_until(stream: &mut TcpStream, kind: u8) -> Option<(u8, Vec<u8>)> {
    loop {
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).await.ok()?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.ok()?;
        if head[3] == kind {
            return Some((head[4], payload));
        }
    }
}

#[tokio::test]
async fn the_proxy_announces_its_stream_limit_and_cuts_off_a_rapid_reset_client() {
    let app = DemoApp::start("v1", &[]);
    let proxy = proxy_for(&app).await;
    proxy.set_h2c(true);

    let mut client = TcpStream::connect(proxy.local_addr).await.expect("connect");
    client.write_all(PREFACE).await.expect("preface");
    client
        .write_all(&frame(4, 0, 0, &[]))
        .await
        .expect("settings");
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3) is 128.
    let (_, settings) = read_until(&mut client, 4)
        .await
        .expect("the proxy's SETTINGS");
    let max_streams = settings
        .chunks(6)
        .find(|s| s[..2] == [0, 3])
        .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
    assert_eq!(max_streams, Some(128), "{settings:?}");

    // Thousands of requests, each cancelled at once: END_STREAM|END_HEADERS, then RST_STREAM
    // (CANCEL), with no pause for an answer.
    let mut burst = Vec::new();
    for i in 0..5_000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(1, 0x5, id, GET_ROOT));
        burst.extend(frame(3, 0, id, &8u32.to_be_bytes()));
    }
    // The proxy may close while the burst is still being written.
    let _ = client.write_all(&burst).await;
    let goaway = tokio::time::timeout(Duration::from_secs(20), read_until(&mut client, 7))
        .await
        .expect("GOAWAY within 20 s");
    let (_, payload) = goaway.expect("a GOAWAY frame before the connection ended");
    // Its error code: ENHANCE_YOUR_CALM (0xb).
    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
    assert_eq!(code, 0xb, "{payload:?}");

    // Everyone else is still served.
    let answer = crate::support::request::Request::get("/")
        .send(proxy.local_addr)
        .expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
}
