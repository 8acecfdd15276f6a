//! The proxy's side of the fuzz targets (`crate::fuzz`, `tests/fuzz/`): what an instance sends
//! back, fed to the response head parser and the body decoders. Whatever the bytes, nothing
//! panics, a body never takes more than its framing allows, and the result never depends on how
//! the bytes were split across reads (a proxy that reads a stream differently when it arrives in
//! other pieces is a desync waiting for the right timing).

use bytes::{BufMut, BytesMut};
use http::Method;

use super::framing::{Decoder, Framing, Step};
use super::head::parse_response;

/// What decoding some bytes came to: the body's data, how it ended, the bytes left after it.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    data: Vec<u8>,
    trailers: Vec<(String, Vec<u8>)>,
    end: End,
    left: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    Done,
    NeedMore,
    Refused,
}

/// `response`: the first byte picks the request method (HEAD or GET) and where the rest is cut
/// in two reads; the rest is an instance's answer, head and body.
pub fn response(data: &[u8]) {
    let Some((&first, wire)) = data.split_first() else {
        return;
    };
    let method = if first & 1 == 1 {
        Method::HEAD
    } else {
        Method::GET
    };
    let cut = usize::from(first >> 1) * wire.len() / 128;
    let whole = head_then_body(&method, &[wire]);
    let split = head_then_body(&method, &[&wire[..cut], &wire[cut..]]);
    assert_eq!(
        whole, split,
        "the answer read differently when cut at {cut}"
    );
}

/// `chunks`: the bytes as a chunked body, read whole and cut at a point the first byte picks.
pub fn chunks(data: &[u8]) {
    let Some((&first, wire)) = data.split_first() else {
        return;
    };
    let cut = usize::from(first) * wire.len() / 256;
    let whole = body(Framing::Chunked, &[wire]);
    let split = body(Framing::Chunked, &[&wire[..cut], &wire[cut..]]);
    assert_eq!(
        whole, split,
        "the chunked body read differently when cut at {cut}"
    );
}

/// Parses a head from `reads` as they arrive, then decodes the rest of them as its body.
fn head_then_body(method: &Method, reads: &[&[u8]]) -> Option<(u16, Framing, bool, Decoded)> {
    let mut buf = BytesMut::new();
    let mut rest = reads.iter();
    let head = loop {
        match parse_response(&mut buf, method) {
            Ok(Some(head)) => break head,
            Ok(None) => buf.put_slice(rest.next()?),
            Err(_) => return None,
        }
    };
    let remaining: Vec<&[u8]> = std::iter::once(&buf[..]).chain(rest.copied()).collect();
    let decoded = body(head.framing, &remaining);
    if let Framing::Length(n) = head.framing {
        assert!(
            decoded.data.len() as u64 <= n,
            "a body longer than its length"
        );
    }
    if head.framing == Framing::Empty {
        assert!(decoded.data.is_empty(), "a body where there is none");
    }
    Some((head.status.as_u16(), head.framing, head.keep_alive, decoded))
}

/// Decodes `reads` as a body framed by `framing`, as they arrive.
fn body(framing: Framing, reads: &[&[u8]]) -> Decoded {
    let total: usize = reads.iter().map(|r| r.len()).sum();
    let mut decoder = Decoder::new(framing);
    let mut buf = BytesMut::new();
    let mut decoded = Decoded {
        data: Vec::new(),
        trailers: Vec::new(),
        end: End::NeedMore,
        left: Vec::new(),
    };
    let mut reads = reads.iter();
    loop {
        let before = buf.len();
        match decoder.step(&mut buf) {
            Ok(Step::Data(data)) => {
                assert!(!data.is_empty(), "an empty data step would loop");
                assert!(buf.len() < before, "data out of nothing");
                decoded.data.extend_from_slice(&data);
            }
            Ok(Step::Trailers(trailers)) => decoded.trailers.extend(
                trailers
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec())),
            ),
            Ok(Step::End) => {
                decoded.end = End::Done;
                break;
            }
            Ok(Step::NeedMore) => match reads.next() {
                Some(read) => buf.put_slice(read),
                None => break,
            },
            Err(_) => {
                decoded.end = End::Refused;
                break;
            }
        }
    }
    // What the decoder did not take stays for whatever follows the body.
    decoded.left = buf.to_vec();
    for read in reads {
        decoded.left.extend_from_slice(read);
    }
    assert!(decoded.data.len() + decoded.left.len() <= total);
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The targets' own checks hold on ordinary answers, cut anywhere (what a fuzz run starts
    /// from).
    #[test]
    fn ordinary_answers_read_the_same_however_they_are_cut() {
        let answers: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nto the close",
            b"HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
        ];
        for answer in answers {
            for first in 0..=255u8 {
                let mut data = vec![first];
                data.extend_from_slice(answer);
                response(&data);
                chunks(&data);
            }
        }
    }
}
