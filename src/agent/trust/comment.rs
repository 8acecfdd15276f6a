//! The signed trusted comment cutover reads: `cutover app=shop version=1.4.2
//! expires=2026-12-31T00:00:00Z`. minisign signs it together with the manifest, so the app, the
//! version and the expiry cannot be changed or moved to another manifest without the key.

use std::time::SystemTime;

/// What a signature vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRelease {
    /// The app: an `app:` manifest's `app.name`; for a plain manifest, the name its versions are
    /// kept under (a deploy of it must not be older than the last one of that name).
    pub app: String,
    pub version: String,
    /// After this instant the signature is refused.
    pub expires: SystemTime,
    /// The signing key's id, as minisign prints it.
    pub key_id: String,
}

/// The trusted comment's fields, or why it is not cutover's.
pub fn parse(comment: &str, key_id: &str) -> Result<SignedRelease, String> {
    let mut words = comment.split_whitespace();
    if words.next() != Some("cutover") {
        return Err("it does not start with `cutover`".into());
    }
    let (mut app, mut version, mut expires) = (None, None, None);
    for word in words {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| format!("`{word}` is not key=value"))?;
        let slot = match key {
            "app" => &mut app,
            "version" => &mut version,
            "expires" => &mut expires,
            other => return Err(format!("unknown field `{other}`")),
        };
        if slot.replace(value.to_owned()).is_some() {
            return Err(format!("`{key}` is given twice"));
        }
    }
    let app = app.ok_or("app= is missing")?;
    if !is_name(&app) {
        return Err(format!(
            "app={app} is not a name (letters, digits, '.', '-', '_')"
        ));
    }
    let version = version
        .filter(|v| !v.is_empty())
        .ok_or("version= is missing")?;
    let expires = expires.ok_or("expires= is missing")?;
    let expires = humantime::parse_rfc3339(&expires)
        .map_err(|_| format!("expires={expires} is not a UTC time like 2026-12-31T00:00:00Z"))?;
    Ok(SignedRelease {
        app,
        version,
        expires,
        key_id: key_id.to_owned(),
    })
}

/// App names become file names under the state dir: keep them plain.
fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 100
        && !text.starts_with('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_comment_is_read() {
        let r = parse(
            "cutover app=shop version=1.4.2 expires=2026-12-31T00:00:00Z",
            "K",
        )
        .expect("parses");
        assert_eq!((r.app.as_str(), r.version.as_str()), ("shop", "1.4.2"));
        assert_eq!(
            humantime::format_rfc3339_seconds(r.expires).to_string(),
            "2026-12-31T00:00:00Z"
        );
    }

    #[test]
    fn each_missing_or_odd_field_says_which() {
        let cases = [
            (
                "timestamp:1555779966\tfile:m.yml",
                "does not start with `cutover`",
            ),
            (
                "cutover version=1 expires=2026-12-31T00:00:00Z",
                "app= is missing",
            ),
            (
                "cutover app=shop expires=2026-12-31T00:00:00Z",
                "version= is missing",
            ),
            ("cutover app=shop version=1", "expires= is missing"),
            ("cutover app=shop version=1 expires=soon", "not a UTC time"),
            (
                "cutover app=../x version=1 expires=2026-12-31T00:00:00Z",
                "not a name",
            ),
            (
                "cutover app=a app=b version=1 expires=2026-12-31T00:00:00Z",
                "twice",
            ),
            (
                "cutover app=a version=1 expire=2026-12-31T00:00:00Z",
                "unknown field `expire`",
            ),
        ];
        for (comment, expected) in cases {
            let err = parse(comment, "K").unwrap_err();
            assert!(err.contains(expected), "{comment}: {err}");
        }
    }
}
