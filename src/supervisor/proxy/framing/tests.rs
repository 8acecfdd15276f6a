//! Table-driven tests of response framing and chunk decoding: every case RFC 9112 section 6.3
//! names, and the malformed variants a smuggling attempt or a broken instance produces.

use std::time::Duration;

use bytes::BytesMut;
use http::Method;

use super::super::head::parse_response;
use super::*;

/// What a head should come to: its framing and whether the connection may be reused, or an error.
#[derive(Debug, PartialEq)]
enum Expect {
    Framed(Framing, bool),
    Refused,
}
use Expect::{Framed, Refused};

fn framed(method: Method, head: &str) -> Expect {
    let mut buf = BytesMut::from(head.as_bytes());
    match parse_response(&mut buf, &method) {
        Ok(Some(head)) => Framed(head.framing, head.keep_alive),
        Ok(None) => panic!("incomplete head: {head:?}"),
        Err(_) => Refused,
    }
}

#[test]
fn response_heads_are_framed_as_rfc_9112_says_and_ambiguous_ones_refused() {
    use Framing::*;
    let get = Method::GET;
    let head = Method::HEAD;
    let cases: &[(&Method, &str, Expect)] = &[
        // Content-Length.
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            Framed(Length(5), true),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            Framed(Empty, true),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: 005\r\n\r\n",
            Framed(Length(5), true),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
            Framed(Length(5), true),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
            Framed(Length(5), true),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            Refused,
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            Refused,
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            Refused,
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            Refused,
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: 5 5\r\n\r\n",
            Refused,
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: 0x5\r\n\r\n",
            Refused,
        ),
        (&get, "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n", Refused),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: 5,\r\n\r\n",
            Refused,
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
            Refused,
        ),
        // Transfer-Encoding: every line read; chunked must be last, and once.
        (
            &get,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            Framed(Chunked, true),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n",
            Framed(Chunked, true),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            Framed(Chunked, true),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n",
            Framed(Chunked, true),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n",
            Framed(Close, false),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            Framed(Close, false),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            Framed(Close, false),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
            Refused,
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            Refused,
        ),
        // Both: the length is dropped and the connection never reused.
        (
            &get,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            Framed(Chunked, false),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            Framed(Chunked, false),
        ),
        // Neither: until the close.
        (&get, "HTTP/1.1 200 OK\r\n\r\n", Framed(Close, false)),
        // No body whatever the head says; one that announces a body is not trusted again.
        (&head, "HTTP/1.1 200 OK\r\n\r\n", Framed(Empty, true)),
        (
            &head,
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            Framed(Empty, true),
        ),
        (
            &head,
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            Framed(Empty, false),
        ),
        (
            &head,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            Framed(Empty, false),
        ),
        (
            &head,
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            Refused,
        ),
        (&get, "HTTP/1.1 204 No Content\r\n\r\n", Framed(Empty, true)),
        (
            &get,
            "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
            Framed(Empty, false),
        ),
        (
            &get,
            "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
            Framed(Empty, false),
        ),
        // Connection and version.
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
            Framed(Length(5), false),
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: x, Close\r\n\r\n",
            Framed(Length(5), false),
        ),
        (
            &get,
            "HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n",
            Framed(Length(5), false),
        ),
        (
            &get,
            "HTTP/1.0 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n",
            Framed(Length(5), true),
        ),
        (
            &get,
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            Framed(Empty, false),
        ),
        // Malformed heads.
        (
            &get,
            "HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 0\r\n\r\n",
            Refused,
        ),
        (
            &get,
            "HTTP/1.1 200 OK\r\ncontent-length : 5\r\n\r\n",
            Refused,
        ),
        (
            &get,
            "HTTP/1.1 999999 OK\r\ncontent-length: 0\r\n\r\n",
            Refused,
        ),
        (
            &get,
            "HTTP/2.0 200 OK\r\ncontent-length: 0\r\n\r\n",
            Refused,
        ),
        (&get, "hello world\r\n\r\n", Refused),
    ];
    let mut wrong = Vec::new();
    for (method, head, expected) in cases {
        let got = framed((*method).clone(), head);
        if got != *expected {
            wrong.push(format!(
                "{method} {head:?}: got {got:?}, expected {expected:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn informational_answers_are_skipped_and_the_hints_read() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\
           keep-alive: timeout=5, max=100\r\nx-request-id: abc\r\n\r\nok"[..],
    );
    let head = parse_response(&mut buf, &Method::POST).unwrap().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.idle_hint, Some(Duration::from_secs(5)));
    assert_eq!(head.request_id.unwrap(), "abc");
    assert_eq!(&buf[..], b"ok", "the body stays in the buffer");
}

/// What a decoder makes of `wire`: the data, and whether the body ended, or an error.
fn decode(framing: Framing, wire: &str) -> Result<(String, bool, usize), String> {
    let mut decoder = Decoder::new(framing);
    let mut buf = BytesMut::from(wire.as_bytes());
    let mut data = Vec::new();
    loop {
        match decoder.step(&mut buf) {
            Ok(Step::Data(d)) => data.extend_from_slice(&d),
            Ok(Step::Trailers(_)) => {}
            Ok(Step::End) => return Ok((String::from_utf8(data).unwrap(), true, buf.len())),
            Ok(Step::NeedMore) => return Ok((String::from_utf8(data).unwrap(), false, buf.len())),
            Err(err) => return Err(err.to_string()),
        }
    }
}

/// The data, whether the body ended and the bytes left after it; `None`: refused.
type Decoded = Option<(&'static str, bool, usize)>;

#[test]
fn chunked_bodies_are_decoded_strictly() {
    let chunked = Framing::Chunked;
    let cases: &[(&str, Decoded)] = &[
        ("5\r\nhello\r\n0\r\n\r\n", Some(("hello", true, 0))),
        (
            "5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
            Some(("hello, world", true, 0)),
        ),
        ("5 ; ext\r\nhello\r\n0\r\n\r\n", Some(("hello", true, 0))),
        (
            "A\r\n0123456789\r\n0\r\n\r\n",
            Some(("0123456789", true, 0)),
        ),
        ("5\r\nhel", Some(("hel", false, 0))),
        ("5\r\nhello\r", Some(("hello", false, 1))),
        ("0\r\nx-checksum: abc\r\n\r\n", Some(("", true, 0))),
        // The end of a body leaves what follows it alone.
        ("0\r\n\r\nHTTP/1.1", Some(("", true, 8))),
        // Refused.
        ("\r\nhello\r\n0\r\n\r\n", None),
        ("5\nhello\r\n0\r\n\r\n", None),
        ("5\r\nhello\n0\r\n\r\n", None),
        ("5\r\nhelloX\r\n0\r\n\r\n", None),
        ("-5\r\nhello\r\n", None),
        ("+5\r\nhello\r\n", None),
        ("0x5\r\nhello\r\n", None),
        ("fffffffffffffffff\r\n", None),
        ("0\r\nno colon\r\n\r\n", None),
    ];
    let mut wrong = Vec::new();
    for (wire, expected) in cases {
        let got = decode(chunked, wire);
        let expected = expected.map(|(data, ended, left)| (data.to_owned(), ended, left));
        if got.as_ref().ok() != expected.as_ref() {
            wrong.push(format!("{wire:?}: got {got:?}, expected {expected:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let long = format!("5;{}", "x".repeat(MAX_CHUNK_LINE + 1));
    assert!(
        decode(chunked, &long).is_err(),
        "an endless extension is refused"
    );
}

#[test]
fn length_bodies_stop_at_their_length_and_close_bodies_take_all() {
    assert_eq!(
        decode(Framing::Length(4), "abcdef"),
        Ok(("abcd".into(), true, 2))
    );
    assert_eq!(
        decode(Framing::Length(8), "abcdef"),
        Ok(("abcdef".into(), false, 0))
    );
    assert_eq!(
        decode(Framing::Close, "abcdef"),
        Ok(("abcdef".into(), false, 0))
    );
    assert_eq!(decode(Framing::Empty, "abc"), Ok((String::new(), true, 3)));
}

#[test]
fn trailer_fields_are_read_and_forbidden_ones_left_out() {
    let mut buf = BytesMut::from(
        &b"0\r\nx-checksum: abc \r\ncontent-length: 5\r\ngrpc-status:0\r\nhost: evil\r\n\
           if-match: x\r\nset-cookie: a=b\r\n\r\n"[..],
    );
    let mut decoder = Decoder::new(Framing::Chunked);
    let Step::Trailers(trailers) = decoder.step(&mut buf).unwrap() else {
        panic!("only trailers in this body");
    };
    let fields: Vec<String> = trailers
        .iter()
        .map(|(name, value)| format!("{name}={}", value.to_str().unwrap()))
        .collect();
    assert_eq!(fields, ["x-checksum=abc", "grpc-status=0"]);
    assert!(matches!(decoder.step(&mut buf).unwrap(), Step::End));
}
