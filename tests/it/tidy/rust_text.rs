//! Reading Rust source as text, for the import graph: comments and literals blanked out, inline
//! modules dropped, `use` statements found and their trees expanded, inline `crate::`/`super::`
//! paths found. Not a parser: enough of the lexical rules (nested block comments, raw strings,
//! char literals beside lifetimes) that no path is read from a comment or a string.

/// One `use` path after braces are expanded: its segments and its `as` name, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsePath {
    pub segments: Vec<String>,
    pub alias: Option<String>,
}

impl UsePath {
    /// The name this path brings into scope: the alias, else its last segment (`a::{self}`
    /// brings `a`).
    pub fn name(&self) -> Option<&str> {
        if let Some(alias) = &self.alias {
            return Some(alias.as_str());
        }
        let mut names = self.segments.iter().rev();
        match names.next().map(String::as_str) {
            Some("self") => names.next().map(String::as_str),
            last => last,
        }
    }
}

/// Replaces comments and the insides of string and char literals with spaces (newlines kept),
/// so that what is left is code; a lifetime (`'a`) is code.
pub fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = |k: usize| chars.get(k).copied().unwrap_or('\0');
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // Copies `chars[from..to]` as spaces (newlines kept).
    let blank = |out: &mut String, from: usize, to: usize| {
        let to = to.min(chars.len());
        out.extend(
            chars[from.min(to)..to]
                .iter()
                .map(|&c| if c == '\n' { c } else { ' ' }),
        );
    };
    while i < chars.len() {
        let end = if at(i) == '/' && at(i + 1) == '/' {
            let end = (i..chars.len())
                .find(|&k| at(k) == '\n')
                .unwrap_or(chars.len());
            blank(&mut out, i, end);
            end
        } else if at(i) == '/' && at(i + 1) == '*' {
            let end = block_comment_end(&chars, i);
            blank(&mut out, i, end);
            end
        } else if let Some(quote) = raw_string_quote(&chars, i) {
            // r"…", r#"…"#, br#"…"#: it ends at a quote followed by as many `#` as opened it.
            let hashes = quote - chars[..quote].iter().rposition(|&c| c != '#').unwrap() - 1;
            let closes = |k: usize| at(k) == '"' && (1..=hashes).all(|h| at(k + h) == '#');
            let close = (quote + 1..chars.len())
                .find(|&k| closes(k))
                .unwrap_or(chars.len());
            out.extend(&chars[i..=quote]);
            blank(&mut out, quote + 1, close);
            out.extend(chars.get(close..=close + hashes).unwrap_or_default());
            close + 1 + hashes
        } else if at(i) == '"' {
            let mut k = i + 1;
            while k < chars.len() && at(k) != '"' {
                k += if at(k) == '\\' { 2 } else { 1 };
            }
            out.push('"');
            blank(&mut out, i + 1, k);
            out.extend(chars.get(k));
            k + 1
        } else if at(i) == '\'' && (at(i + 1) == '\\' || (at(i + 1) != '\'' && at(i + 2) == '\'')) {
            // A char literal ('x', '\n', '\'', '\u{2192}'); any other quote starts a lifetime.
            let first = if at(i + 1) == '\\' { i + 3 } else { i + 2 };
            let close = (first..chars.len())
                .find(|&k| at(k) == '\'')
                .unwrap_or(chars.len());
            out.push('\'');
            blank(&mut out, i + 1, close);
            out.extend(chars.get(close));
            close + 1
        } else {
            out.push(chars[i]);
            i + 1
        };
        i = end;
    }
    out
}

/// Where the block comment opening at `start` ends (they nest), just past its `*/`.
fn block_comment_end(chars: &[char], start: usize) -> usize {
    let mut depth = 0;
    let mut k = start;
    while k + 1 < chars.len() {
        match (chars[k], chars[k + 1]) {
            ('/', '*') => depth += 1,
            ('*', '/') => depth -= 1,
            _ => {
                k += 1;
                continue;
            }
        }
        k += 2;
        if depth == 0 {
            return k;
        }
    }
    chars.len()
}

/// When a raw string (`r"`, `r#"`, `br#"`) starts at `i`, the index of its opening quote.
fn raw_string_quote(chars: &[char], i: usize) -> Option<usize> {
    let at = |k: usize| chars.get(k).copied().unwrap_or('\0');
    if i > 0 && (at(i - 1).is_alphanumeric() || at(i - 1) == '_') {
        return None;
    }
    let mut k = match (at(i), at(i + 1)) {
        ('r', _) => i + 1,
        ('b', 'r') => i + 2,
        _ => return None,
    };
    while at(k) == '#' {
        k += 1;
    }
    (at(k) == '"').then_some(k)
}

/// Drops every inline `mod name { … }` block (its paths are relative to itself, not to the file).
pub fn without_inline_modules(code: &str) -> String {
    let mut code = code.to_owned();
    let mut from = 0;
    while let Some(start) = find_word(&code, "mod", from) {
        let after = code[start + 3..].trim_start();
        let name_len = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let opens = after[name_len..].trim_start().starts_with('{');
        if name_len == 0 || !opens {
            from = start + 3;
            continue;
        }
        let open = start + code[start..].find('{').unwrap();
        let mut depth = 0;
        let mut end = code.len();
        for (k, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => continue,
            }
            if depth == 0 {
                end = open + k + 1;
                break;
            }
        }
        code.replace_range(start..end, "");
        from = start;
    }
    code
}

/// The next `word` in `code` at or after `from` that is a whole word.
fn find_word(code: &str, word: &str, from: usize) -> Option<usize> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = from;
    while let Some(found) = code.get(from..)?.find(word) {
        let start = from + found;
        let end = start + word.len();
        let before = code[..start].chars().next_back();
        let after = code[end..].chars().next();
        if !before.is_some_and(is_ident) && !after.is_some_and(is_ident) {
            return Some(start);
        }
        from = end;
    }
    None
}

/// One `use` statement: its tree (`a::{b, c as d}`) and whether it is `pub` (a re-export).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseStatement {
    pub tree: String,
    pub public: bool,
}

/// Every `use …;` in `code`.
pub fn use_statements(code: &str) -> Vec<UseStatement> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(start) = find_word(code, "use", from) {
        from = start + 3;
        // `use` as a keyword is followed by a space (`use<'a>` in a bound is not an import).
        if !code[from..].starts_with(char::is_whitespace) {
            continue;
        }
        let Some(len) = code[from..].find(';') else {
            break;
        };
        let before = code[..start].trim_end();
        let visibility = match before.strip_suffix(')') {
            Some(inner) => inner.rfind('(').map_or("", |open| inner[..open].trim_end()),
            None => before,
        };
        let public = visibility.ends_with("pub")
            && !visibility[..visibility.len() - 3]
                .ends_with(|c: char| c.is_alphanumeric() || c == '_');
        out.push(UseStatement {
            tree: code[from..from + len].trim().to_owned(),
            public,
        });
        from += len;
    }
    out
}

/// A use tree's paths, braces expanded: `a::{b::{C, D}, e as f, self}` is `a::b::C`,
/// `a::b::D`, `a::e` (as `f`) and `a::self`.
pub fn expand_use_tree(tree: &str) -> Vec<UsePath> {
    let mut out = Vec::new();
    expand_into(tree, &[], &mut out);
    out
}

fn expand_into(tree: &str, prefix: &[String], out: &mut Vec<UsePath>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let mut base = prefix.to_vec();
        base.extend(segments(tree[..open].trim().trim_end_matches("::")));
        let close = tree.rfind('}').unwrap_or(tree.len());
        for part in split_top_level(&tree[open + 1..close]) {
            expand_into(part, &base, out);
        }
        return;
    }
    let mut words = tree.split_whitespace();
    let path = words.next().unwrap_or_default();
    let alias = match (words.next(), words.next()) {
        (Some("as"), Some(alias)) => Some(alias.to_owned()),
        _ => None,
    };
    let mut all = prefix.to_vec();
    all.extend(segments(path));
    out.push(UsePath {
        segments: all,
        alias,
    });
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `a, b::{c, d}, e` split at the commas outside braces.
fn split_top_level(list: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in list.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&list[start..]);
    parts
}

/// Paths written inline, outside `use`: `crate::a::b` and `super::super::c` (as many `::name`
/// as follow, with no space between).
pub fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for root in ["crate", "super"] {
        let mut from = 0;
        while let Some(start) = find_word(code, root, from) {
            from = start + root.len();
            let mut path = vec![root.to_owned()];
            let mut at = from;
            while let Some(rest) = code[at..].strip_prefix("::") {
                let len = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                if len == 0 {
                    break;
                }
                path.push(rest[..len].to_owned());
                at += 2 + len;
            }
            if path.len() > 1 {
                out.push(path);
            }
            from = from.max(at);
        }
    }
    out
}

// The reader's own checks, on small inputs.

fn paths(tree: &str) -> Vec<String> {
    expand_use_tree(tree)
        .into_iter()
        .map(|p| match p.alias {
            Some(alias) => format!("{} as {alias}", p.segments.join("::")),
            None => p.segments.join("::"),
        })
        .collect()
}

#[test]
fn use_trees_expand_nested_braces_self_and_as() {
    assert_eq!(
        paths("super::{a::{B, C as D}, e, self}"),
        ["super::a::B", "super::a::C as D", "super::e", "super::self"]
    );
    assert_eq!(paths("crate::x::Y as Z"), ["crate::x::Y as Z"]);
    assert_eq!(paths("{self, super::*}"), ["self", "super::*"]);
    assert_eq!(
        paths("crate::a::{\n    b,\n    c::{self, D},\n}"),
        ["crate::a::b", "crate::a::c::self", "crate::a::c::D"]
    );
}

#[test]
fn use_statements_know_their_visibility() {
    let code = "use a::b;\npub use c::D;\npub(crate) use e::F;\nfn f() -> impl Sized + use<> {}";
    let found: Vec<(String, bool)> = use_statements(code)
        .into_iter()
        .map(|s| (s.tree, s.public))
        .collect();
    assert_eq!(
        found,
        [
            ("a::b".to_owned(), false),
            ("c::D".to_owned(), true),
            ("e::F".to_owned(), true)
        ]
    );
}

#[test]
fn comments_and_literals_are_blanked_and_lifetimes_kept() {
    let code = r##"a // crate::x
b /* crate::y /* nested */ still */ c
"crate::z \" crate::z" r#"crate::w "quoted" "#
fn f<'a>(x: &'a str) { let _ = ('"', '\'', 'q'); }"##;
    let blanked = blank_comments_and_literals(code);
    assert_eq!(blanked.lines().count(), code.lines().count());
    assert!(!blanked.contains("crate"), "{blanked}");
    assert!(blanked.contains("fn f<'a>(x: &'a str)"), "{blanked}");
    assert!(blanked.contains(" c\n"), "{blanked}");
}

#[test]
fn inline_modules_are_dropped_and_inline_paths_found() {
    let code = "mod a;\n#[cfg(test)]\nmod tests { fn f() { crate::t::x(); } }\nfn g() { super::super::p::q(); crate::r::<u8>(); }";
    let code = without_inline_modules(code);
    assert!(code.contains("mod a;") && !code.contains("tests"), "{code}");
    let found: Vec<String> = inline_paths(&code).iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["crate::r", "super::super::p::q"]);
}
