//! A source URL parsed into where it points (`Source`): a local file, an HTTP(S) URL (Google
//! Cloud Storage included) or an S3 bucket and key.

use std::path::PathBuf;

use super::error::FetchError;

/// A parsed source URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Http(String),
    S3 { bucket: String, key: String },
}

impl Source {
    /// Parses `url`; a plain path (no `scheme://`) is a local file.
    pub fn parse(url: &str) -> Result<Source, FetchError> {
        let invalid = |reason: &str| FetchError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Ok(Source::File(PathBuf::from(url)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                // `file:///abs` leaves `/abs`; `file://localhost/abs` is the same file.
                let path = rest.strip_prefix("localhost").unwrap_or(rest);
                if !path.starts_with('/') {
                    return Err(invalid(
                        "a file URL needs an absolute path, as in file:///srv/app.tar.gz",
                    ));
                }
                Ok(Source::File(PathBuf::from(path)))
            }
            "http" | "https" => Ok(Source::Http(url.to_owned())),
            "s3" => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() || key.is_empty() {
                    return Err(invalid(
                        "an S3 URL needs a bucket and a key, as in s3://bucket/app.tar.gz",
                    ));
                }
                Ok(Source::S3 {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                })
            }
            // Google Cloud Storage serves public objects over plain HTTPS; private buckets need
            // OAuth, which cutover does not do (a 401/403 then says so through the status).
            "gs" => Ok(Source::Http(format!(
                "https://storage.googleapis.com/{rest}"
            ))),
            other => Err(FetchError::UnsupportedScheme {
                url: url.to_owned(),
                scheme: other.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            Source::parse("file:///srv/a.tgz").unwrap(),
            Source::File("/srv/a.tgz".into())
        );
        assert_eq!(
            Source::parse("/srv/a.tgz").unwrap(),
            Source::File("/srv/a.tgz".into())
        );
        assert_eq!(
            Source::parse("s3://b/dir/a.tgz").unwrap(),
            Source::S3 {
                bucket: "b".into(),
                key: "dir/a.tgz".into()
            }
        );
        assert_eq!(
            Source::parse("gs://b/a.tgz").unwrap(),
            Source::Http("https://storage.googleapis.com/b/a.tgz".into())
        );
        assert!(matches!(
            Source::parse("https://x/a").unwrap(),
            Source::Http(_)
        ));
    }

    #[test]
    fn refuses_unknown_schemes_and_incomplete_urls() {
        let err = Source::parse("ftp://host/a.tgz").unwrap_err().to_string();
        assert!(err.contains("unsupported URL scheme 'ftp'"), "{err}");
        assert!(Source::parse("s3://bucket-only").is_err());
        assert!(Source::parse("file://relative/path").is_err());
    }
}
