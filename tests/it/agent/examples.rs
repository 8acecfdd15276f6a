//! Every example manifest under manifests/ parses as the agent would read it: a user copies these,
//! so a broken one is a bug.

use std::path::PathBuf;

use cutover::agent::manifest;

#[test]
fn every_example_manifest_parses_without_warnings() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("manifests/") {
        let path = entry.expect("entry").path();
        // watch.yml configures `cutover watch` (tests/it/watch.rs checks it), trust.yml the
        // trusted keys (agent::trust::keys checks it).
        if path.extension().is_none_or(|e| e != "yml")
            || path.ends_with("watch.yml")
            || path.ends_with("trust.yml")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        // Rendered with an empty environment: every env default must yield a valid manifest.
        let parsed =
            manifest::parse(&text, &|_| None).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            parsed.warnings.is_empty(),
            "{}: {:?}",
            path.display(),
            parsed.warnings
        );
        checked += 1;
    }
    assert!(
        checked >= 4,
        "only {checked} examples found in {}",
        dir.display()
    );
}

#[test]
fn the_app_example_carries_its_app_section() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/app-blue-green.yml");
    let text = std::fs::read_to_string(path).expect("read example");
    let parsed = manifest::parse(&text, &|_| None).expect("parses");
    let files = parsed.files.expect("has src");
    let app = files.app.expect("has app");
    assert_eq!((app.name.as_str(), app.instances), ("shop", 2));
    assert_eq!(files.dest_mode, 0o755);
}
