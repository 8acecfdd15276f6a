//! Choosing what to deploy from a repository's releases: semver order, the asset glob,
//! prereleases only when asked, and the ignore, bad and failed lists.
//!
//! Pure functions over the API's data, so every rule is unit-tested without a server.

use std::collections::BTreeMap;

use globset::{Glob, GlobMatcher};
use semver::Version;

use super::config::GithubSpec;
use super::github::{Asset, Release};
use super::version::parse_version;

/// The rules of one watch.
pub struct Rules<'a> {
    pub asset: GlobMatcher,
    pub checksums_asset: Option<GlobMatcher>,
    pub prereleases: bool,
    pub ignore: Vec<Version>,
    /// Versions never to pick again, with why: marked bad by the supervisor or failed here.
    pub never: &'a BTreeMap<String, String>,
    /// The newest version this watch deployed; only newer ones are candidates.
    pub deployed: Option<&'a Version>,
}

impl<'a> Rules<'a> {
    pub fn new(
        spec: &GithubSpec,
        never: &'a BTreeMap<String, String>,
        deployed: Option<&'a Version>,
    ) -> Rules<'a> {
        // Globs were compiled once when the config was loaded, so these cannot fail here; an
        // unmatchable pattern is still the safe fallback.
        let compile = |g: &str| {
            Glob::new(g)
                .unwrap_or_else(|_| Glob::new("\u{0}never").expect("a literal glob compiles"))
                .compile_matcher()
        };
        Rules {
            asset: compile(&spec.asset),
            checksums_asset: spec.checksums_asset.as_deref().map(compile),
            prereleases: spec.prereleases,
            ignore: spec
                .ignore
                .iter()
                .filter_map(|v| parse_version(v))
                .collect(),
            never,
            deployed,
        }
    }
}

/// A release that may be deployed, pending its checksum.
#[derive(Debug)]
pub struct Candidate<'r> {
    pub version: Version,
    pub release: &'r Release,
    pub asset: &'r Asset,
    pub checksums_asset: Option<&'r Asset>,
}

/// The outcome of looking at one releases list.
#[derive(Debug, Default)]
pub struct Selection<'r> {
    /// The newest version published (whatever its fate), for status.
    pub newest: Option<Version>,
    /// Deployable releases newer than the deployed one, newest first.
    pub candidates: Vec<Candidate<'r>>,
    /// Newer releases passed over, with the reason, newest first.
    pub skipped: Vec<(String, String)>,
}

/// Applies the rules to a releases list (in any order).
pub fn select<'r>(releases: &'r [Release], rules: &Rules<'_>) -> Selection<'r> {
    let mut parsed: Vec<(Option<Version>, &Release)> = releases
        .iter()
        .map(|r| (parse_version(&r.tag_name), r))
        .collect();
    // Newest first; unparsable tags last (they are only reported).
    parsed.sort_by(|a, b| b.0.cmp(&a.0));
    let mut out = Selection {
        newest: parsed
            .iter()
            .filter(|(_, r)| !r.draft)
            .find_map(|(v, _)| v.clone()),
        ..Selection::default()
    };
    for (version, release) in parsed {
        if release.draft {
            continue;
        }
        let Some(version) = version else {
            out.skipped.push((
                release.tag_name.clone(),
                "tag is not a semver version".into(),
            ));
            continue;
        };
        if rules.deployed.is_some_and(|d| &version <= d) {
            break;
        }
        match verdict(&version, release, rules) {
            Ok((asset, checksums_asset)) => out.candidates.push(Candidate {
                version,
                release,
                asset,
                checksums_asset,
            }),
            Err(reason) => out.skipped.push((version.to_string(), reason)),
        }
    }
    out
}

type Assets<'r> = (&'r Asset, Option<&'r Asset>);

fn verdict<'r>(
    version: &Version,
    release: &'r Release,
    rules: &Rules<'_>,
) -> Result<Assets<'r>, String> {
    if release.prerelease && !rules.prereleases {
        return Err("prerelease (set `prereleases: true` to deploy them)".into());
    }
    if rules.ignore.contains(version) {
        return Err("on the ignore list".into());
    }
    if let Some(why) = rules.never.get(&version.to_string()) {
        return Err(why.clone());
    }
    let matching: Vec<&Asset> = release
        .assets
        .iter()
        .filter(|a| rules.asset.is_match(&a.name))
        .collect();
    let asset = match matching.as_slice() {
        [one] => *one,
        [] => return Err(format!("no asset matches {}", rules.asset.glob())),
        many => {
            let names: Vec<&str> = many.iter().map(|a| a.name.as_str()).collect();
            return Err(format!(
                "{} assets match {}: {}; make the pattern narrower",
                many.len(),
                rules.asset.glob(),
                names.join(", ")
            ));
        }
    };
    let checksums_asset = match &rules.checksums_asset {
        None => None,
        Some(glob) => match release.assets.iter().find(|a| glob.is_match(&a.name)) {
            Some(a) => Some(a),
            None => {
                return Err(format!(
                    "refused: no checksums asset matches {}, and verification is never skipped",
                    glob.glob()
                ))
            }
        },
    };
    Ok((asset, checksums_asset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(tag: &str, prerelease: bool, assets: &[&str]) -> Release {
        Release {
            tag_name: tag.into(),
            draft: false,
            prerelease,
            assets: assets
                .iter()
                .enumerate()
                .map(|(i, name)| Asset {
                    id: i as u64,
                    name: (*name).into(),
                    url: format!("https://api.example/assets/{i}"),
                    browser_download_url: format!("https://dl.example/{name}"),
                    digest: None,
                    size: 1,
                })
                .collect(),
        }
    }

    fn spec() -> GithubSpec {
        serde_norway::from_str("{repo: a/b, asset: 'shop-*-linux-amd64.tar.gz'}").unwrap()
    }

    fn versions(sel: &Selection<'_>) -> Vec<String> {
        sel.candidates
            .iter()
            .map(|c| c.version.to_string())
            .collect()
    }

    #[test]
    fn semver_order_not_string_order_and_v_prefix_is_optional() {
        let rs = vec![
            release("v1.9.0", false, &["shop-1.9.0-linux-amd64.tar.gz"]),
            release("1.10.0", false, &["shop-1.10.0-linux-amd64.tar.gz"]),
            release("v1.2.0", false, &["shop-1.2.0-linux-amd64.tar.gz"]),
        ];
        let never = BTreeMap::new();
        let deployed = Version::new(1, 2, 0);
        let sel = select(&rs, &Rules::new(&spec(), &never, Some(&deployed)));
        assert_eq!(versions(&sel), ["1.10.0", "1.9.0"]);
        assert_eq!(sel.newest, Some(Version::new(1, 10, 0)));
    }

    #[test]
    fn prereleases_only_when_asked() {
        let rs = vec![release("v2.0.0-rc.1", true, &["shop-2-linux-amd64.tar.gz"])];
        let never = BTreeMap::new();
        let mut s = spec();
        let sel = select(&rs, &Rules::new(&s, &never, None));
        assert!(sel.candidates.is_empty());
        assert!(sel.skipped[0].1.starts_with("prerelease"));
        s.prereleases = true;
        assert_eq!(
            versions(&select(&rs, &Rules::new(&s, &never, None))),
            ["2.0.0-rc.1"]
        );
    }

    #[test]
    fn ignored_bad_and_assetless_releases_are_skipped_with_a_reason() {
        let rs = vec![
            release("v1.3.0", false, &["shop-1.3.0-linux-amd64.tar.gz"]),
            release("v1.4.0", false, &["shop-1.4.0-linux-amd64.tar.gz"]),
            release("v1.5.0", false, &["shop-1.5.0-darwin-arm64.tar.gz"]),
            release("nightly", false, &[]),
        ];
        let mut never = BTreeMap::new();
        never.insert("1.4.0".to_owned(), "marked bad: rolled back".to_owned());
        let mut s = spec();
        s.ignore = vec!["v1.3.0".into()];
        let sel = select(&rs, &Rules::new(&s, &never, None));
        assert!(sel.candidates.is_empty());
        let reasons: Vec<String> = sel
            .skipped
            .iter()
            .map(|(v, r)| format!("{v}: {r}"))
            .collect();
        assert_eq!(
            reasons,
            [
                "1.5.0: no asset matches shop-*-linux-amd64.tar.gz",
                "1.4.0: marked bad: rolled back",
                "1.3.0: on the ignore list",
                "nightly: tag is not a semver version",
            ]
        );
    }

    #[test]
    fn a_missing_checksums_asset_refuses_the_release() {
        let rs = vec![release("v1.0.0", false, &["shop-1.0.0-linux-amd64.tar.gz"])];
        let never = BTreeMap::new();
        let mut s = spec();
        s.checksums_asset = Some("SHA256SUMS".into());
        let sel = select(&rs, &Rules::new(&s, &never, None));
        assert!(sel.skipped[0]
            .1
            .contains("no checksums asset matches SHA256SUMS"));
    }

    #[test]
    fn two_matching_assets_are_ambiguous() {
        let rs = vec![release(
            "v1.0.0",
            false,
            &["shop-a-linux-amd64.tar.gz", "shop-b-linux-amd64.tar.gz"],
        )];
        let never = BTreeMap::new();
        let sel = select(&rs, &Rules::new(&spec(), &never, None));
        assert!(sel.skipped[0].1.contains("2 assets match"));
    }
}
