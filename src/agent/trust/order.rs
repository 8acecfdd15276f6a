//! The order of release versions, for refusing a signed manifest older than the one deployed:
//! semver when both versions are semver (a leading `v` allowed), else "natural" order, where runs
//! of digits compare as numbers (`20241117-112233` < `20241118-000000`, `build-9` < `build-10`).

use std::cmp::Ordering;

/// How version `a` stands to version `b`.
pub fn compare(a: &str, b: &str) -> Ordering {
    match (semver_of(a), semver_of(b)) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ => natural(a, b),
    }
}

fn semver_of(text: &str) -> Option<semver::Version> {
    let bare = text.strip_prefix(['v', 'V']).unwrap_or(text);
    semver::Version::parse(bare).ok()
}

fn natural(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (runs(a), runs(b));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (is_digits(x), is_digits(y)) {
                    (true, true) => {
                        let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                        x.len().cmp(&y.len()).then_with(|| x.cmp(y))
                    }
                    _ => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

/// The text cut into alternating runs of digits and of other characters.
fn runs(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let first = rest.chars().next()?;
        let digits = first.is_ascii_digit();
        let end = rest
            .find(|c: char| c.is_ascii_digit() != digits)
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        rest = tail;
        Some(run)
    })
}

fn is_digits(run: &str) -> bool {
    run.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_and_natural_orders() {
        let less = [
            ("1.4.2", "1.10.0"),
            ("v1.4.2", "1.4.3"),
            ("1.5.0-rc.1", "1.5.0"),
            ("20241117-112233", "20241118-000000"),
            ("build-9", "build-10"),
            ("1.4", "1.4.1"),
        ];
        for (a, b) in less {
            assert_eq!(compare(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(compare(b, a), Ordering::Greater, "{b} > {a}");
        }
        assert_eq!(compare("1.4.2", "v1.4.2"), Ordering::Equal);
        assert_eq!(compare("007", "7"), Ordering::Equal);
    }
}
