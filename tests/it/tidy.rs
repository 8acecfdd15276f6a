//! Tidy checks that keep the code easy to enter: every file says what it owns, no file in `src/`
//! grows past ~450 lines, the arrows between modules point one way, and no files import each
//! other in a circle (STYLE.md, src/ARCHITECTURE.md). `import_graph` reads the imports of
//! `src/`, with `rust_text` reading the Rust text under it.

mod import_graph;
mod rust_text;

use std::path::{Path, PathBuf};

/// What the fuzz crate (`tests/fuzz/`) builds and finds: not ours to read, and ignored by git.
const GENERATED: &[&str] = &["target", "corpus", "artifacts", "coverage"];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path
                    .file_name()
                    .is_some_and(|name| GENERATED.iter().any(|g| name == *g))
                {
                    continue;
                }
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn source(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn every_file_opens_with_a_doc_line_saying_what_it_owns() {
    let mut missing = Vec::new();
    for dir in ["src", "tests"] {
        for path in rust_files(&root().join(dir)) {
            if !source(&path).starts_with("//!") {
                missing.push(path.strip_prefix(root()).unwrap().display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files without a leading `//!` line: {missing:?}"
    );
}

/// `(module dir, forbidden path prefix, why)`: what a module must never reach into.
const ARROWS: &[(&str, &str, &str)] = &[
    (
        "src/protocol",
        "crate::agent",
        "protocol depends on nothing of ours",
    ),
    (
        "src/protocol",
        "crate::supervisor",
        "protocol depends on nothing of ours",
    ),
    (
        "src/protocol",
        "crate::cli",
        "protocol depends on nothing of ours",
    ),
    (
        "src/agent",
        "crate::supervisor",
        "the agent talks to the supervisor only through protocol",
    ),
    (
        "src/supervisor",
        "crate::agent",
        "the supervisor never runs agent code",
    ),
    (
        "src/supervisor",
        "crate::cli",
        "the CLI calls the supervisor, not the other way",
    ),
];

#[test]
fn module_arrows_point_one_way() {
    let mut wrong = Vec::new();
    for (dir, forbidden, why) in ARROWS {
        for path in rust_files(&root().join(dir)) {
            if source(&path).contains(forbidden) {
                wrong.push(format!(
                    "{} uses {forbidden}: {why}",
                    path.strip_prefix(root()).unwrap().display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn only_the_process_module_spawns_or_signals_app_processes() {
    let allowed = [
        root().join("src/supervisor/process.rs"),
        // The operator's DNS-01 hook: a command run to completion under a deadline (killed if
        // it overruns), never an app process, which only `process` starts, stops and adopts.
        root().join("src/supervisor/acme/dns_hook.rs"),
    ];
    let mut wrong = Vec::new();
    for path in rust_files(&root().join("src/supervisor")) {
        if allowed.contains(&path) {
            continue;
        }
        let text = source(&path);
        for needle in ["Command::new", "killpg", "signal::kill", "libc::kill"] {
            if text.contains(needle) {
                wrong.push(format!(
                    "{} uses {needle}",
                    path.strip_prefix(root()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "only supervisor::process may spawn or signal: {wrong:#?}"
    );
}

/// The longest a file in `src/` may be: past it, a file mixes several concerns (STYLE.md).
const MAX_LINES: usize = 450;

/// `(file under src/, why)`: files allowed past `MAX_LINES`, each with its reason (generated
/// code, a table of test cases). None today; keep it that way.
const LONG_FILES: &[(&str, &str)] = &[];

#[test]
fn no_file_in_src_is_longer_than_450_lines() {
    let mut long = Vec::new();
    for path in rust_files(&root().join("src")) {
        let name = path
            .strip_prefix(root().join("src"))
            .unwrap()
            .display()
            .to_string();
        let lines = source(&path).lines().count();
        if lines > MAX_LINES && !LONG_FILES.iter().any(|(allowed, _)| *allowed == name) {
            long.push(format!("src/{name}: {lines} lines"));
        }
    }
    assert!(
        long.is_empty(),
        "files past {MAX_LINES} lines; split them by what their parts own: {long:#?}"
    );
}

#[test]
fn no_import_circle_between_files_in_src() {
    let circles = import_graph::Crate::read(&root().join("src")).circles();
    let listed: Vec<String> = circles
        .iter()
        .map(|edges| format!("circle:\n    {}", edges.join("\n    ")))
        .collect();
    assert!(
        circles.is_empty(),
        "files in src/ import each other; move what they share down into a module of its own \
         (a parent's mod.rs is the face, its children do not reach back up into it):\n{}",
        listed.join("\n")
    );
}
