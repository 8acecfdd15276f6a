//! `http://` and `https://` through reqwest: redirects followed, `HTTP(S)_PROXY`/`NO_PROXY`
//! honoured (reqwest reads them), extra headers sent (and a scoped token, `TokenFor`, only where
//! it belongs), non-2xx answers refused, and ranged
//! requests so that a broken download resumes instead of starting over.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_RANGE, RANGE,
};
use reqwest::StatusCode;

use super::error::FetchError;
use super::opened::Opened;
use super::options::FetchOptions;

/// A connection that delivers nothing for this long is treated as broken and retried; without
/// it a silently dead peer would hang a deploy that has no `--timeout`.
const READ_IDLE: Duration = Duration::from_secs(60);
const CONNECT: Duration = Duration::from_secs(30);

pub(super) fn client(url: &str, opts: &FetchOptions) -> Result<reqwest::Client, FetchError> {
    let invalid = |reason: String| FetchError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &opts.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| invalid(format!("bad HTTP header name '{name}': {e}")))?;
        // Header values may be secrets: name only the header in the error.
        let value = HeaderValue::from_str(value)
            .map_err(|e| invalid(format!("bad value for HTTP header '{name}': {e}")))?;
        headers.append(name, value);
    }
    if let Some(token) = opts.token_for.as_ref().filter(|t| t.covers(url)) {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.token))
            .map_err(|_| invalid("the token has characters a header cannot carry".into()))?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
        headers.insert(ACCEPT, HeaderValue::from_static("application/octet-stream"));
    }
    reqwest::Client::builder()
        .user_agent(concat!("cutover/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers)
        .connect_timeout(CONNECT)
        .read_timeout(READ_IDLE)
        .build()
        .map_err(|e| invalid(format!("could not set up the HTTP client: {e}")))
}

pub(super) async fn open(
    client: &reqwest::Client,
    url: &str,
    target: &str,
    offset: u64,
) -> Result<Opened, FetchError> {
    let mut request = client.get(target);
    if offset > 0 {
        request = request.header(RANGE, format!("bytes={offset}-"));
    }
    let response = request
        .send()
        .await
        .map_err(|e| request_error(url, e.without_url()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: status.to_string(),
        });
    }
    // Only a 206 whose range starts where we asked is a resumption; a 200 is the whole body
    // (or any other 2xx) again, and the caller must start over with it.
    let resumed = offset == 0 || status == StatusCode::PARTIAL_CONTENT;
    if offset > 0 && status == StatusCode::PARTIAL_CONTENT {
        let start = response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(range_start);
        if start != Some(offset) {
            // Part of the body from somewhere else cannot be appended, nor restarted from.
            return Err(FetchError::Transfer {
                url: url.to_owned(),
                detail: format!("asked for bytes from {offset}, the server sent a different range"),
            });
        }
    }
    let total = match response.content_length() {
        Some(len) if resumed => Some(len + offset),
        len => len,
    };
    let url = url.to_owned();
    let mut at = if resumed { offset } else { 0 };
    let stream = response.bytes_stream().map(move |chunk| match chunk {
        Ok(bytes) => {
            at += bytes.len() as u64;
            Ok(bytes)
        }
        Err(e) => Err(FetchError::Interrupted {
            url: url.clone(),
            at,
            detail: error_chain(&e.without_url()),
        }),
    });
    Ok(Opened {
        stream: Box::pin(stream),
        resumed,
        total,
    })
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` value.
fn range_start(value: &str) -> Option<u64> {
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn request_error(url: &str, e: reqwest::Error) -> FetchError {
    let detail = error_chain(&e);
    if e.is_connect() {
        FetchError::Connect {
            url: url.to_owned(),
            detail,
        }
    } else if e.is_builder() {
        FetchError::InvalidUrl {
            url: url.to_owned(),
            reason: detail,
        }
    } else {
        FetchError::Transfer {
            url: url.to_owned(),
            detail,
        }
    }
}

/// reqwest's top-level message is vague ("error sending request"); the cause chain says why.
/// Callers strip the URL first (`without_url`): the message names it once already.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_start_of_a_content_range() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
    }
}
