//! `s3://bucket/key` through aws-sdk-s3 and the AWS default credential chain.
//!
//! `AWS_ENDPOINT_URL` (read by aws-config) points cutover at an S3-compatible server; with an
//! endpoint set, path-style addressing is used because such servers rarely have wildcard DNS
//! for `bucket.host`. Without a configured region, us-east-1 is assumed, as the AWS CLI does.

use std::fmt;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use futures_util::stream;

use super::error::FetchError;
use super::opened::Opened;

/// An explicit S3 endpoint and credentials, instead of the environment's.
#[derive(Clone, Default)]
pub struct S3Settings {
    /// e.g. `http://127.0.0.1:5000` for an S3-compatible server.
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    /// `(access key id, secret access key)`.
    pub credentials: Option<(String, String)>,
}

impl fmt::Debug for S3Settings {
    // The secret key must never reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint_url", &self.endpoint_url)
            .field("region", &self.region)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(id, _)| (id, "<redacted>")),
            )
            .finish()
    }
}

const DEFAULT_REGION: &str = "us-east-1";

/// An S3 client from the default chain, overridden by `settings` where they say so.
pub async fn client(settings: Option<&S3Settings>) -> aws_sdk_s3::Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(s) = settings {
        if let Some(endpoint) = &s.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(region) = &s.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some((id, secret)) = &s.credentials {
            loader =
                loader.credentials_provider(Credentials::new(id, secret, None, None, "cutover"));
        }
    }
    let shared = loader.load().await;
    let mut config = aws_sdk_s3::config::Builder::from(&shared);
    if shared.region().is_none() {
        config = config.region(Region::new(DEFAULT_REGION));
    }
    if shared.endpoint_url().is_some() {
        config = config.force_path_style(true);
    }
    aws_sdk_s3::Client::from_conf(config.build())
}

pub(super) async fn open(
    client: &aws_sdk_s3::Client,
    url: &str,
    bucket: &str,
    key: &str,
    offset: u64,
) -> Result<Opened, FetchError> {
    let mut request = client.get_object().bucket(bucket).key(key);
    if offset > 0 {
        request = request.range(format!("bytes={offset}-"));
    }
    let output = request
        .send()
        .await
        .map_err(|e| get_error(url, bucket, e))?;
    let resumed = offset == 0 || output.content_range().is_some();
    let length = output.content_length().and_then(|n| u64::try_from(n).ok());
    let total = match length {
        Some(len) if resumed => Some(len + offset),
        len => len,
    };
    let url = url.to_owned();
    let at = if resumed { offset } else { 0 };
    let chunks = stream::unfold(
        (output.body, at, url),
        |(mut body, mut at, url)| async move {
            match body.next().await? {
                Ok(bytes) => {
                    at += bytes.len() as u64;
                    Some((Ok(bytes), (body, at, url)))
                }
                Err(e) => {
                    let err = FetchError::Interrupted {
                        url: url.clone(),
                        at,
                        detail: DisplayErrorContext(&e).to_string(),
                    };
                    Some((Err(err), (body, at, url)))
                }
            }
        },
    );
    Ok(Opened {
        stream: Box::pin(chunks),
        resumed,
        total,
    })
}

fn get_error(url: &str, bucket: &str, err: SdkError<GetObjectError>) -> FetchError {
    let url = url.to_owned();
    let detail = DisplayErrorContext(&err).to_string();
    if let SdkError::ServiceError(service) = &err {
        let e = service.err();
        if e.is_no_such_key() {
            return FetchError::S3NoSuchKey { url };
        }
        match e.code() {
            Some("NoSuchBucket") => {
                return FetchError::S3NoSuchBucket {
                    url,
                    bucket: bucket.to_owned(),
                }
            }
            Some(
                code @ ("InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "AccessDenied"
                | "ExpiredToken"
                | "InvalidToken"),
            ) => {
                let message = e.message().unwrap_or("");
                return FetchError::S3Credentials {
                    url,
                    detail: format!("{code} {message}").trim().to_owned(),
                };
            }
            _ => {}
        }
        // A HEAD-less GET of a missing key on some servers answers a bare 404.
        if service.raw().status().as_u16() == 404 {
            return FetchError::S3NoSuchKey { url };
        }
    }
    if detail.contains("credentials") {
        return FetchError::S3Credentials { url, detail };
    }
    if matches!(err, SdkError::DispatchFailure(_)) {
        return FetchError::Connect { url, detail };
    }
    if matches!(err, SdkError::TimeoutError(_)) {
        return FetchError::Transfer { url, detail };
    }
    FetchError::S3 { url, detail }
}
