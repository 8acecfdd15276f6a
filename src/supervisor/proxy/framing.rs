//! Where an instance's response body ends (RFC 9112 section 6.3), decided strictly, because a
//! proxy that reads a body's end differently from its instance hands the rest of the bytes to the
//! next client on the connection: the framing of a response head, the decoder that follows a body
//! to its end, and the trailer fields that may close a chunked one.
//!
//! Strict means: a `Content-Length` that is not plain digits, or two that differ, is refused; every
//! `Transfer-Encoding` line is read, and one that does not end in a single `chunked` makes the
//! body run to the close; a head with both drops the length and the connection is never reused;
//! a response that has no body but announces one (a HEAD answered with a length) is not trusted
//! with the next request either.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// A chunk-size line (with its extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// A chunked body with more trailer fields than this is refused.
const MAX_TRAILERS: usize = 64;
/// A trailer block longer than this is refused.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// The error for bytes from an instance that break HTTP/1.1 (a head, a body's framing, a
/// trailer block): the exchange fails and its connection is not reused.
pub(super) fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the instance closes the connection.
    Close,
}

/// The framing of a response to `method`, and whether the connection may carry another request
/// after it (as far as the framing goes: `Connection` is the caller's).
pub(super) fn framing(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> io::Result<(Framing, bool)> {
    let length = content_length(headers)?;
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    let encoded = codings.peek().is_some();
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // No body, whatever the head says; but an instance that announces one may send it
        // anyway, late, where the next request's answer is expected.
        let announced = encoded || length.is_some_and(|n| n > 0);
        return Ok((Framing::Empty, !announced));
    }
    if encoded {
        let mut last_chunked = false;
        let mut chunked = 0;
        for value in codings {
            let value = value
                .to_str()
                .map_err(|_| invalid("invalid transfer-encoding"))?;
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                last_chunked = coding.eq_ignore_ascii_case("chunked");
                chunked += usize::from(last_chunked);
            }
        }
        if chunked > 1 {
            return Err(invalid("transfer-encoding applies chunked more than once"));
        }
        // Transfer-Encoding wins over Content-Length; a head with both is a smuggling attempt
        // or a broken instance, and its connection is not trusted again.
        return Ok(if last_chunked {
            (Framing::Chunked, length.is_none())
        } else {
            (Framing::Close, false)
        });
    }
    Ok(match length {
        None => (Framing::Close, false),
        Some(0) => (Framing::Empty, true),
        Some(n) => (Framing::Length(n), true),
    })
}

/// The `Content-Length` of a head: every line and every comma-separated value must be the same
/// plain decimal number (no sign, no space inside), else the head is refused.
fn content_length(headers: &HeaderMap) -> io::Result<Option<u64>> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let digits = part.trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(invalid("invalid content-length"));
            }
            let n = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
                .ok_or_else(|| invalid("content-length out of range"))?;
            if length.is_some_and(|seen| seen != n) {
                return Err(invalid("differing content-length values"));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Where a body is in its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoder {
    /// Bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the instance closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Bytes left in the current chunk.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields until an empty line.
    Trailers,
}

/// What the buffered bytes gave.
#[derive(Debug)]
pub(crate) enum Step {
    Data(Bytes),
    /// The trailer fields that end a chunked body (the body is done).
    Trailers(HeaderMap),
    End,
    NeedMore,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        match framing {
            Framing::Empty | Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunk::Size),
            Framing::Close => Decoder::Close,
        }
    }

    /// Decodes what is buffered, taking from `buf` only what belongs to the body.
    pub fn step(&mut self, buf: &mut BytesMut) -> io::Result<Step> {
        loop {
            match *self {
                Decoder::Done => return Ok(Step::End),
                Decoder::Length(left) | Decoder::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let rest = left - n as u64;
                    *self = match *self {
                        Decoder::Length(_) if rest == 0 => Decoder::Done,
                        Decoder::Length(_) => Decoder::Length(rest),
                        _ if rest == 0 => Decoder::Chunked(Chunk::DataEnd),
                        _ => Decoder::Chunked(Chunk::Data(rest)),
                    };
                    return Ok(Step::Data(buf.split_to(n).freeze()));
                }
                Decoder::Close => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                Decoder::Chunked(Chunk::Size) => {
                    // httparse takes an empty size as zero: a size has at least one digit.
                    if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
                        return Err(invalid("invalid chunk size"));
                    }
                    match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            buf.advance(used);
                            *self = Decoder::Chunked(if size == 0 {
                                Chunk::Trailers
                            } else {
                                Chunk::Data(size)
                            });
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                            return Err(invalid("chunk size line too long"))
                        }
                        Ok(httparse::Status::Partial) => return Ok(Step::NeedMore),
                        Err(_) => return Err(invalid("invalid chunk size")),
                    }
                }
                Decoder::Chunked(Chunk::DataEnd) => {
                    match buf.get(..2) {
                        Some(b"\r\n") => buf.advance(2),
                        Some(_) => return Err(invalid("chunk data longer than its size")),
                        None if buf.first().is_none_or(|&b| b == b'\r') => {
                            return Ok(Step::NeedMore)
                        }
                        None => return Err(invalid("chunk data longer than its size")),
                    }
                    *self = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Trailers) => {
                    let Some(trailers) = parse_trailers(buf)? else {
                        return Ok(Step::NeedMore);
                    };
                    *self = Decoder::Done;
                    if !trailers.is_empty() {
                        return Ok(Step::Trailers(trailers));
                    }
                }
            }
        }
    }
}

/// Parses the trailer block after a chunked body's last chunk (fields, then an empty line) at
/// the start of `buf` and removes it; `None` while it is incomplete. Fields that may not be
/// trailers are left out.
pub(super) fn parse_trailers(buf: &mut BytesMut) -> io::Result<Option<HeaderMap>> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(parsed)) => parsed,
        Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILER_BYTES => {
            return Err(invalid("trailer fields too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(invalid(&format!("invalid trailer fields: {err}"))),
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| invalid("invalid trailer name"))?;
        let value =
            HeaderValue::from_bytes(field.value).map_err(|_| invalid("invalid trailer value"))?;
        trailers.append(name, value);
    }
    let _ = buf.split_to(len);
    retain_allowed_trailers(&mut trailers);
    Ok(Some(trailers))
}

/// Removes the fields that must not come as trailers (RFC 9110 section 6.5.1): framing, routing,
/// request modifiers, authentication, response control data, content metadata, and the proxy's
/// own forwarding headers. A recipient that merged them into the head would be fooled.
pub(super) fn retain_allowed_trailers(trailers: &mut HeaderMap) {
    let forbidden: Vec<HeaderName> = trailers
        .keys()
        .filter(|name| forbidden_trailer(name))
        .cloned()
        .collect();
    for name in forbidden {
        tracing::debug!("left out trailer field {name}: it may not be a trailer");
        trailers.remove(name);
    }
}

fn forbidden_trailer(name: &HeaderName) -> bool {
    const FORBIDDEN: &[&str] = &[
        "age",
        "authorization",
        "cache-control",
        "connection",
        "content-encoding",
        "content-length",
        "content-range",
        "content-type",
        "cookie",
        "date",
        "expect",
        "expires",
        "forwarded",
        "host",
        "keep-alive",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "retry-after",
        "set-cookie",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "vary",
        "warning",
        "www-authenticate",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-request-id",
    ];
    let name = name.as_str();
    name.starts_with("if-") || FORBIDDEN.binary_search(&name).is_ok()
}

#[cfg(test)]
mod tests;
