//! What a release tag means as a version: `v1.4.2` and `1.4.2` are both semver 1.4.2. Read by
//! the config (an `ignore:` entry must be one) and by the selection (releases in semver order).

use semver::Version;

/// A tag as a version: `v1.4.2` and `1.4.2` are both 1.4.2; anything else is not a release we
/// can order, so it is skipped (with that reason) rather than guessed at.
pub fn parse_version(tag: &str) -> Option<Version> {
    let bare = tag
        .strip_prefix('v')
        .or_else(|| tag.strip_prefix('V'))
        .unwrap_or(tag);
    Version::parse(bare).ok()
}
