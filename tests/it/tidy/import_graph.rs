//! Which files of `src/` import which, read from their text, so that the tidy test can refuse a
//! circle between files (STYLE.md: arrows point one way; a `mod.rs` is its folder's face).
//!
//! An approximation, kept small on purpose and checked below on small inputs: each file is a
//! module (`a/b.rs` and `a/b/mod.rs` are `a::b`); its comments, string and char literals and
//! inline `mod x { … }` blocks (tests, mostly: their paths are relative to themselves) are set
//! aside; what is left is read for `use` trees rooted at `crate`, `super`, `self` or one of the
//! file's child modules (braces expanded, `as` noted), and for inline `crate::…`/`super::…`
//! paths. A path points at the longest module prefix that is a file; when the next name is
//! re-exported there with `pub use`, the re-export is followed to the file that defines it. A
//! parent's `mod child;` is not an edge: declaring a child is what a face does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::rust_text::{
    blank_comments_and_literals, expand_use_tree, inline_paths, use_statements,
    without_inline_modules,
};

/// A module path, as `["supervisor", "proxy"]`; the crate root is empty.
pub type ModulePath = Vec<String>;

/// How deep re-exports are followed (`pub use` of a `pub use` …) before giving up.
const MAX_REEXPORT_HOPS: usize = 5;

/// The files of one crate and what each of them imports.
pub struct Crate {
    files: BTreeMap<ModulePath, File>,
}

struct File {
    /// The path under `src/`, for messages.
    name: String,
    /// The text with comments, literals and inline modules blanked out.
    code: String,
}

/// One path written in `from` that points at `to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub from: ModulePath,
    pub to: ModulePath,
    pub path: String,
}

/// Which module a file under `src/` is: `a/b.rs` and `a/b/mod.rs` are `a::b`, `lib.rs` is the
/// root; `main.rs` (the binary, not part of the library) is `None`.
pub fn module_of(relative: &str) -> Option<ModulePath> {
    let stem = relative.strip_suffix(".rs")?;
    let mut parts: ModulePath = stem.split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|last| last == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [only] if only == "main" => None,
        [only] if only == "lib" => Some(Vec::new()),
        _ => Some(parts),
    }
}

impl Crate {
    /// Reads every `.rs` file under `src`.
    pub fn read(src: &Path) -> Crate {
        let mut sources = Vec::new();
        let mut dirs = vec![src.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir:?}: {e}")) {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let relative = path
                        .strip_prefix(src)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    let text = std::fs::read_to_string(&path)
                        .unwrap_or_else(|e| panic!("read {path:?}: {e}"));
                    sources.push((relative, text));
                }
            }
        }
        Crate::from_sources(sources)
    }

    /// Builds the crate from `(path under src/, text)` pairs.
    pub fn from_sources(sources: impl IntoIterator<Item = (String, String)>) -> Crate {
        let mut files = BTreeMap::new();
        for (name, text) in sources {
            if let Some(module) = module_of(&name) {
                let code = without_inline_modules(&blank_comments_and_literals(&text));
                files.insert(module, File { name, code });
            }
        }
        Crate { files }
    }

    /// Every path from one file to another, in order of file, then target, then path.
    pub fn edges(&self) -> BTreeSet<Edge> {
        let mut edges = BTreeSet::new();
        for (module, file) in &self.files {
            for path in self.paths_used(module, &file.code) {
                let Some(to) = self.resolve(module, &path, 0) else {
                    continue;
                };
                if &to != module {
                    edges.insert(Edge {
                        from: module.clone(),
                        to,
                        path: path.join("::"),
                    });
                }
            }
        }
        edges
    }

    /// The sets of files that import each other (strongly connected, more than one file), each
    /// with the edges inside it, as `file → file : path` lines.
    pub fn circles(&self) -> Vec<Vec<String>> {
        let edges = self.edges();
        let mut next: BTreeMap<&ModulePath, BTreeSet<&ModulePath>> = BTreeMap::new();
        for edge in &edges {
            if self.files.contains_key(&edge.to) {
                next.entry(&edge.from).or_default().insert(&edge.to);
            }
        }
        let nodes: Vec<&ModulePath> = self.files.keys().collect();
        strongly_connected(&nodes, &next)
            .into_iter()
            .filter(|set| set.len() > 1)
            .map(|set| {
                edges
                    .iter()
                    .filter(|e| set.contains(&&e.from) && set.contains(&&e.to))
                    .map(|e| {
                        let name = |m: &ModulePath| self.files[m].name.clone();
                        format!("{} → {} : {}", name(&e.from), name(&e.to), e.path)
                    })
                    .collect()
            })
            .collect()
    }

    /// The module paths `code` (the file `module`) uses, made to start at `crate`, `super` or
    /// `self`.
    fn paths_used(&self, module: &ModulePath, code: &str) -> Vec<Vec<String>> {
        let mut paths = Vec::new();
        for statement in use_statements(code) {
            for mut path in expand_use_tree(&statement.tree) {
                let Some(first) = path.segments.first() else {
                    continue;
                };
                if !matches!(first.as_str(), "crate" | "super" | "self") {
                    if !self.files.contains_key(&child(module, first)) {
                        continue; // another crate (std, tokio, …)
                    }
                    path.segments.insert(0, "self".to_owned());
                }
                paths.push(path.segments);
            }
        }
        paths.extend(inline_paths(code));
        paths
    }

    /// The file `path` (written in `module`) points at; `None` when it leaves the crate.
    fn resolve(&self, module: &ModulePath, path: &[String], hops: usize) -> Option<ModulePath> {
        let (mut at, rest) = match path.first()?.as_str() {
            "crate" => (Vec::new(), &path[1..]),
            "super" => {
                let climbs = path.iter().take_while(|s| *s == "super").count();
                let keep = module.len().checked_sub(climbs)?;
                (module[..keep].to_vec(), &path[climbs..])
            }
            "self" => (module.clone(), &path[1..]),
            first if self.files.contains_key(&child(module, first)) => (module.clone(), path),
            _ => return None,
        };
        // The longest prefix that is a file.
        let mut rest = rest;
        while let Some((first, tail)) = rest.split_first() {
            let deeper = child(&at, first);
            if !self.files.contains_key(&deeper) {
                break;
            }
            at = deeper;
            rest = tail;
        }
        // The next name may be re-exported here from the file that defines it.
        if let Some(name) = rest.first().filter(|n| *n != "*" && *n != "self") {
            if hops < MAX_REEXPORT_HOPS {
                let code = self.files.get(&at).map_or("", |f| f.code.as_str());
                for statement in use_statements(code).into_iter().filter(|s| s.public) {
                    for reexport in expand_use_tree(&statement.tree) {
                        if reexport.name() == Some(name.as_str()) {
                            if let Some(to) = self.resolve(&at, &reexport.segments, hops + 1) {
                                return Some(to);
                            }
                        }
                    }
                }
            }
        }
        Some(at)
    }
}

fn child(module: &ModulePath, name: &str) -> ModulePath {
    let mut child = module.clone();
    child.push(name.to_owned());
    child
}

/// Tarjan's algorithm: the strongly connected sets of `nodes` under `next`.
fn strongly_connected<'a>(
    nodes: &[&'a ModulePath],
    next: &BTreeMap<&'a ModulePath, BTreeSet<&'a ModulePath>>,
) -> Vec<BTreeSet<&'a ModulePath>> {
    struct Walk<'a, 'g> {
        next: &'g BTreeMap<&'a ModulePath, BTreeSet<&'a ModulePath>>,
        /// Visit order of each node, and the lowest visit order it reaches.
        order: BTreeMap<&'a ModulePath, (usize, usize)>,
        stack: Vec<&'a ModulePath>,
        on_stack: BTreeSet<&'a ModulePath>,
        sets: Vec<BTreeSet<&'a ModulePath>>,
    }
    impl<'a> Walk<'a, '_> {
        fn visit(&mut self, node: &'a ModulePath) {
            let index = self.order.len();
            self.order.insert(node, (index, index));
            self.stack.push(node);
            self.on_stack.insert(node);
            let next = self.next;
            for &to in next.get(node).into_iter().flatten() {
                let reached = match self.order.get(to) {
                    None => {
                        self.visit(to);
                        self.order[to].1
                    }
                    Some(&(to_index, _)) if self.on_stack.contains(to) => to_index,
                    Some(_) => continue,
                };
                let low = &mut self.order.get_mut(node).unwrap().1;
                *low = (*low).min(reached);
            }
            if self.order[node].0 == self.order[node].1 {
                let mut set = BTreeSet::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    set.insert(top);
                    if top == node {
                        break;
                    }
                }
                self.sets.push(set);
            }
        }
    }
    let mut walk = Walk {
        next,
        order: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        sets: Vec::new(),
    };
    for &node in nodes {
        if !walk.order.contains_key(node) {
            walk.visit(node);
        }
    }
    walk.sets
}

// The graph's own checks, on small crates.

/// The edges of a crate given as `(path under src/, text)`, as `from → to : path` lines.
fn edges_of(files: &[(&str, &str)]) -> Vec<String> {
    let krate = Crate::from_sources(files.iter().map(|(n, t)| (n.to_string(), t.to_string())));
    krate
        .edges()
        .into_iter()
        .map(|e| format!("{} → {} : {}", e.from.join("/"), e.to.join("/"), e.path))
        .collect()
}

#[test]
fn files_map_to_module_paths() {
    assert_eq!(module_of("lib.rs"), Some(vec![]));
    assert_eq!(module_of("main.rs"), None);
    assert_eq!(module_of("a/mod.rs"), Some(vec!["a".to_owned()]));
    assert_eq!(
        module_of("a/b.rs"),
        Some(vec!["a".to_owned(), "b".to_owned()])
    );
}

#[test]
fn comments_literals_and_inline_modules_are_not_read() {
    let code = r##"
        // use crate::a;
        /* use crate::b; /* nested */ crate::b::x */
        const S: &str = "use crate::c; \" crate::c::y";
        const R: &str = r#"crate::d::z "quoted" "#;
        fn f<'a>(x: &'a str) -> char { let _ = '"'; let _ = '\''; 'x' }
        mod tests { use crate::e; }
        use crate::f::G;
    "##;
    let files = [
        ("a.rs", "//! a"),
        ("b.rs", "//! b"),
        ("c.rs", "//! c"),
        ("d.rs", "//! d"),
        ("e.rs", "//! e"),
        ("f.rs", "//! f"),
        ("user.rs", code),
    ];
    assert_eq!(edges_of(&files), ["user → f : crate::f::G"]);
    let blanked = blank_comments_and_literals(code);
    assert_eq!(blanked.lines().count(), code.lines().count());
    assert!(blanked.contains("fn f<'a>(x: &'a str)"), "{blanked}");
}

#[test]
fn super_climbs_one_module_per_super() {
    let files = [
        ("a/mod.rs", ""),
        ("a/x.rs", ""),
        ("a/b/mod.rs", ""),
        (
            "a/b/c.rs",
            "use super::super::x::Y;\nfn f() { super::sibling(); }",
        ),
    ];
    assert_eq!(
        edges_of(&files),
        [
            "a/b/c → a/b : super::sibling",
            "a/b/c → a/x : super::super::x::Y"
        ]
    );
}

#[test]
fn paths_point_at_the_longest_prefix_that_is_a_file() {
    let files = [
        ("lib.rs", ""),
        ("m/mod.rs", "pub fn defined_here() {}"),
        ("m/inner.rs", ""),
        ("user.rs", "use crate::m::inner::Thing;\nuse crate::m::defined_here;\nuse crate::m::{self, inner};\nfn f() { crate::m::inner::g::<u8>(); }"),
    ];
    assert_eq!(
        edges_of(&files),
        [
            "user → m : crate::m",
            "user → m : crate::m::defined_here",
            "user → m : crate::m::self",
            "user → m/inner : crate::m::inner",
            "user → m/inner : crate::m::inner::Thing",
            "user → m/inner : crate::m::inner::g",
        ]
    );
}

#[test]
fn reexports_are_followed_to_the_defining_file() {
    let face = "mod inner;\nmod other;\npub use inner::Thing;\npub(crate) use self::other::Named as Alias;\nuse other::Private;";
    let files = [
        ("m/mod.rs", face),
        ("m/inner.rs", ""),
        ("m/other.rs", ""),
        (
            "user.rs",
            "use crate::m::{Alias, Thing};\nuse crate::m::Private;",
        ),
    ];
    // `Thing` and `Alias` lead on to the files that define them; `Private` is not re-exported,
    // so its path stops at the face. `mod inner;` is no edge; the face's `use` of a child is.
    assert_eq!(
        edges_of(&files),
        [
            "m → m/inner : self::inner::Thing",
            "m → m/other : self::other::Named",
            "m → m/other : self::other::Private",
            "user → m : crate::m",
            "user → m : crate::m::Private",
            "user → m/inner : crate::m::Thing",
            "user → m/other : crate::m::Alias",
        ]
    );
}

#[test]
fn circles_are_listed_with_the_edges_that_make_them() {
    let files = [
        ("lib.rs", ""),
        ("a.rs", "use crate::b::B;"),
        ("b.rs", "use crate::a::A;\nuse crate::c::C;"),
        ("c.rs", ""),
        ("d/mod.rs", "mod e;\nuse e::E;"),
        ("d/e.rs", "use super::D;"),
    ];
    let krate = Crate::from_sources(files.iter().map(|(n, t)| (n.to_string(), t.to_string())));
    let mut circles = krate.circles();
    circles.sort();
    assert_eq!(
        circles,
        [
            vec!["a.rs → b.rs : crate::b::B", "b.rs → a.rs : crate::a::A"],
            vec![
                "d/mod.rs → d/e.rs : self::e::E",
                "d/e.rs → d/mod.rs : super::D"
            ],
        ]
    );
}
