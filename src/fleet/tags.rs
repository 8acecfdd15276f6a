//! What a node runs, published as Serf tags (`cutover.shop=1.4.2`), and what the fleet runs as a
//! whole, read back from every member's tags.
//!
//! Tags are gossiped by Serf to every member, so fleet status and catching up need no store of
//! their own. Serf caps a member's tags at about 512 bytes in total: names and versions only.

use std::collections::BTreeMap;

use super::serf::Member;

/// Prefix of every tag cutover sets; the rest of the key is the app's name.
pub const PREFIX: &str = "cutover.";

pub fn key(app: &str) -> String {
    format!("{PREFIX}{app}")
}

/// The apps a member publishes, name → version.
pub fn versions(member: &Member) -> BTreeMap<String, String> {
    member
        .tags
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(PREFIX)?.to_owned(), v.clone())))
        .filter(|(app, version)| !app.is_empty() && !version.is_empty())
        .collect()
}

/// The version of `app` that most of `members` run, with how many run it and how many publish
/// the app at all. A tie has no majority: the fleet is mid-rollout, and guessing could undo it.
pub fn majority(members: &[Member], app: &str) -> Option<Majority> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for member in members {
        if let Some(version) = versions(member).remove(app) {
            *counts.entry(version).or_default() += 1;
        }
    }
    let total = counts.values().sum();
    let best = *counts.values().max()?;
    let mut winners = counts.into_iter().filter(|(_, n)| *n == best);
    let (version, count) = winners.next()?;
    if winners.next().is_some() {
        return None;
    }
    Some(Majority {
        version,
        count,
        total,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Majority {
    pub version: String,
    /// Members running `version`.
    pub count: usize,
    /// Members publishing the app at all.
    pub total: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, tags: &[(&str, &str)]) -> Member {
        Member {
            name: name.to_owned(),
            addr: "127.0.0.1:7946".to_owned(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            status: "alive".to_owned(),
        }
    }

    #[test]
    fn versions_come_from_cutover_tags_only() {
        let m = member(
            "a",
            &[("role", "web"), ("cutover.shop", "2"), ("cutover.", "x")],
        );
        assert_eq!(
            versions(&m),
            BTreeMap::from([("shop".to_owned(), "2".to_owned())])
        );
    }

    #[test]
    fn the_most_common_version_wins() {
        let ms = [
            member("a", &[("cutover.shop", "2")]),
            member("b", &[("cutover.shop", "2")]),
            member("c", &[("cutover.shop", "1")]),
            member("d", &[("role", "db")]),
        ];
        let m = majority(&ms, "shop").unwrap();
        assert_eq!((m.version.as_str(), m.count, m.total), ("2", 2, 3));
        assert_eq!(majority(&ms, "api"), None);
    }

    #[test]
    fn a_tie_has_no_majority() {
        let ms = [
            member("a", &[("cutover.shop", "2")]),
            member("b", &[("cutover.shop", "1")]),
        ];
        assert_eq!(majority(&ms, "shop"), None);
    }
}
