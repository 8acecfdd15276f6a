//! The deploy manifest: stretcher's YAML (rendered as a Go template first) plus cutover's optional
//! `app:` section, checked completely before anything is downloaded or run.
//!
//! Parsing is two passes over the rendered text: a generic one that catches syntax errors and lists
//! unknown keys (a stretcher manifest may carry keys of its own, so they warn instead of failing),
//! then a typed one whose errors keep serde_norway's field path, line and column.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use super::checksum::{Checksum, ChecksumError};
use super::template::{self, TemplateError};
use super::yaml_depth;
use crate::protocol::AppSpec;

/// Mode of `dest` when the manifest names none (stretcher's default).
pub const DEFAULT_DEST_MODE: u32 = 0o755;

const TOP_LEVEL_KEYS: &[&str] = &[
    "src",
    "checksum",
    "dest",
    "dest_mode",
    "commands",
    "excludes",
    "exclude_from",
    "sync_strategy",
    "app",
];
const COMMAND_KEYS: &[&str] = &["pre", "post", "success", "failure"];

/// A checked manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The archive to deploy; `None` is commands-only mode.
    pub files: Option<Files>,
    pub commands: Commands,
    /// Things worth telling the operator that do not stop the deploy (unknown keys, odd modes).
    pub warnings: Vec<String>,
}

/// What to fetch and where to put it.
#[derive(Debug, Clone)]
pub struct Files {
    pub src: String,
    pub checksum: Checksum,
    /// As written in the manifest; a relative path is relative to the agent's start directory.
    pub dest: PathBuf,
    pub dest_mode: u32,
    pub excludes: Vec<String>,
    /// A file inside the archive, passed to rsync as `--exclude-from`.
    pub exclude_from: Option<String>,
    pub strategy: SyncStrategy,
    /// cutover's managed-app section: the files become a release handed to the supervisor.
    pub app: Option<AppSpec>,
}

/// The hook lists, each run in order until one fails.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Commands {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub pre: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub post: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub success: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub failure: Vec<String>,
}

/// How the unpacked tree reaches `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStrategy {
    /// `rsync -a --delete`: dest is updated in place, excluded paths survive.
    Rsync,
    /// An atomic rename of the whole tree onto an absent or empty dest.
    Mv,
}

/// Why a manifest cannot be deployed; one line naming the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("manifest is empty: it needs at least src, checksum and dest, or commands")]
    Empty,
    #[error("manifest is not valid YAML: {0}")]
    Yaml(String),
    #[error("manifest nests deeper than {limit} levels at line {line}: a manifest is a few levels deep, check how it was generated")]
    TooDeep { line: u64, limit: usize },
    #[error("manifest has a wrong value: {0}")]
    Value(String),
    #[error("manifest is not a YAML mapping (it is {0}): expected keys like src, checksum, dest")]
    NotMapping(&'static str),
    #[error("invalid strategy name {0:?} in sync_strategy: use rsync or mv")]
    InvalidStrategy(String),
    #[error("src is set but checksum is missing: add the archive's hex digest (e.g. the output of sha256sum)")]
    MissingChecksum,
    #[error("src is set but dest is missing: add the directory to deploy into")]
    MissingDest,
    // The checksum's own message already names the field.
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
    #[error("dest_mode: {0}")]
    DestMode(String),
    #[error("app: needs src, checksum and dest: the release archive is what the app runs")]
    AppWithoutSrc,
    /// The `app:` section, refused by `AppSpec::check` (its message names the key).
    #[error("app: {0}")]
    App(String),
}

/// Raw shape of the YAML; `Manifest` is what it means once checked.
#[derive(Debug, Deserialize)]
struct Raw {
    #[serde(default)]
    src: Option<String>,
    #[serde(default)]
    checksum: Option<String>,
    #[serde(default)]
    dest: Option<String>,
    #[serde(default)]
    dest_mode: Option<ModeValue>,
    #[serde(default, deserialize_with = "null_as_default")]
    commands: Commands,
    #[serde(default, deserialize_with = "null_as_empty")]
    excludes: Vec<String>,
    #[serde(default)]
    exclude_from: Option<String>,
    #[serde(default)]
    sync_strategy: Option<String>,
    #[serde(default)]
    app: Option<AppSpec>,
}

/// `dest_mode` as YAML gives it: `0711` is a string to a YAML 1.2 parser, `0o711` and `493` ints.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ModeValue {
    Int(u64),
    Str(String),
}

/// Renders and checks `text` (the fetched manifest), reading variables with `lookup`.
pub fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Manifest, ManifestError> {
    let rendered = template::render(text, lookup)?;
    // Before serde_norway, which reads the whole document first and is slow on deep nesting.
    yaml_depth::check(&rendered, yaml_depth::MAX_DEPTH).map_err(|line| ManifestError::TooDeep {
        line,
        limit: yaml_depth::MAX_DEPTH,
    })?;
    let value: serde_norway::Value =
        serde_norway::from_str(&rendered).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    let mut warnings = Vec::new();
    match &value {
        serde_norway::Value::Null => return Err(ManifestError::Empty),
        serde_norway::Value::Mapping(map) => unknown_keys(map, &mut warnings),
        other => return Err(ManifestError::NotMapping(kind(other))),
    }
    let raw: Raw = serde_norway::from_str(&rendered).map_err(|e| value_error(&e.to_string()))?;
    // Checked first: stretcher refuses a bad strategy before downloading anything.
    let strategy = match raw.sync_strategy.as_deref().map(str::trim) {
        None | Some("") | Some("rsync") => SyncStrategy::Rsync,
        Some("mv") => SyncStrategy::Mv,
        Some(other) => return Err(ManifestError::InvalidStrategy(other.to_owned())),
    };
    let dest_mode = match raw.dest_mode {
        None => DEFAULT_DEST_MODE,
        Some(value) => dest_mode(value, &mut warnings)?,
    };
    let src = non_empty(raw.src);
    let files = match src {
        None => {
            if raw.app.is_some() {
                return Err(ManifestError::AppWithoutSrc);
            }
            if non_empty(raw.dest).is_some() {
                warnings.push(
                    "dest is set but src is not: commands-only mode, nothing is placed".into(),
                );
            }
            None
        }
        Some(src) => {
            let checksum = non_empty(raw.checksum).ok_or(ManifestError::MissingChecksum)?;
            let dest = non_empty(raw.dest).ok_or(ManifestError::MissingDest)?;
            if strategy == SyncStrategy::Mv && !raw.excludes.is_empty() {
                warnings.push("excludes are ignored with sync_strategy mv".into());
            }
            Some(Files {
                src,
                checksum: Checksum::from_str(checksum.trim())?,
                dest: PathBuf::from(dest),
                dest_mode,
                excludes: raw.excludes,
                exclude_from: non_empty(raw.exclude_from),
                strategy,
                app: raw.app,
            })
        }
    };
    // The supervisor checks the section again, but by then the release is fetched, unpacked and
    // in place: a bad `listen` would leave it behind.
    if let Some(app) = files.as_ref().and_then(|f| f.app.as_ref()) {
        app.check().map_err(ManifestError::App)?;
    }
    Ok(Manifest {
        files,
        commands: raw.commands,
        warnings,
    })
}

/// A typed error, with a hint for the classic mistake: `- echo ":foo: bar"` is valid YAML, but a
/// one-key map where a command line was expected.
fn value_error(message: &str) -> ManifestError {
    let mut message = message.to_owned();
    if message.starts_with("commands.") && message.contains("invalid type: map") {
        message.push_str(
            ": a command containing \": \" must be quoted as a whole, e.g. - \"echo ':foo: bar'\"",
        );
    }
    ManifestError::Value(message)
}

/// Reads a mode the way stretcher's Go YAML does: a leading `0` means octal, anything else is the
/// number as written. Bits above 0o7777 are refused: they are not a mode.
fn dest_mode(value: ModeValue, warnings: &mut Vec<String>) -> Result<u32, ManifestError> {
    let mode = match value {
        ModeValue::Int(n) => {
            if n > 0o777 {
                warnings.push(format!(
                    "dest_mode {n} is read as a decimal number (mode {n:o} octal): write it with a leading 0 for octal, e.g. 0{n}"
                ));
            }
            n
        }
        ModeValue::Str(s) => {
            let digits = s.trim();
            let octal = digits
                .strip_prefix("0o")
                .or_else(|| digits.strip_prefix('0'))
                .unwrap_or(digits);
            u64::from_str_radix(if octal.is_empty() { "0" } else { octal }, 8).map_err(|_| {
                ManifestError::DestMode(format!("{s:?} is not an octal mode: write it like 0755"))
            })?
        }
    };
    if mode > 0o7777 {
        return Err(ManifestError::DestMode(format!(
            "{mode:o} (octal) is not a file mode: write it like 0755"
        )));
    }
    Ok(mode as u32)
}

fn unknown_keys(map: &serde_norway::Mapping, warnings: &mut Vec<String>) {
    let mut unknown = BTreeMap::new();
    for (key, value) in map {
        let Some(key) = key.as_str() else { continue };
        if !TOP_LEVEL_KEYS.contains(&key) {
            unknown.insert(key.to_owned(), ());
        }
        if let (true, Some(commands)) = (key == "commands", value.as_mapping()) {
            for sub in commands.keys().filter_map(|k| k.as_str()) {
                if !COMMAND_KEYS.contains(&sub) {
                    unknown.insert(format!("commands.{sub}"), ());
                }
            }
        }
    }
    for key in unknown.keys() {
        warnings.push(format!(
            "unknown manifest key {key:?} is ignored: check its spelling"
        ));
    }
}

fn kind(value: &serde_norway::Value) -> &'static str {
    match value {
        serde_norway::Value::Null => "empty",
        serde_norway::Value::Bool(_) => "a boolean",
        serde_norway::Value::Number(_) => "a number",
        serde_norway::Value::String(_) => "a string",
        serde_norway::Value::Sequence(_) => "a list",
        serde_norway::Value::Mapping(_) => "a mapping",
        serde_norway::Value::Tagged(_) => "a tagged value",
    }
}

/// stretcher treats an empty string like an absent key.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// `pre:` with nothing after it is YAML null: an empty list, as in stretcher.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

fn null_as_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Commands, D::Error> {
    Ok(Option::<Commands>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_vars(_: &str) -> Option<String> {
        None
    }

    fn parse_ok(text: &str) -> Manifest {
        parse(text, &no_vars).expect("manifest parses")
    }

    #[test]
    fn commands_only_mode_and_null_lists() {
        let m = parse_ok("commands:\n  pre:\n  post: [ \"true\" ]\n");
        assert!(m.files.is_none());
        assert!(m.commands.pre.is_empty());
        assert_eq!(m.commands.post, vec!["true".to_owned()]);
    }

    #[test]
    fn dest_mode_is_octal_with_a_leading_zero_like_go_yaml() {
        let mut warnings = Vec::new();
        let mode = |v| dest_mode(v, &mut Vec::new()).expect("valid mode");
        assert_eq!(mode(ModeValue::Str("0711".into())), 0o711);
        assert_eq!(mode(ModeValue::Str("0o711".into())), 0o711);
        assert_eq!(mode(ModeValue::Int(0o700)), 0o700);
        assert!(dest_mode(ModeValue::Str("0799".into()), &mut warnings).is_err());
        // serde_norway reads `0711` as the string "0711" (YAML 1.2): check the whole path.
        let value: Raw = serde_norway::from_str("dest_mode: 0711").expect("yaml");
        assert!(matches!(value.dest_mode, Some(ModeValue::Str(ref s)) if s == "0711"));
        let value: Raw = serde_norway::from_str("dest_mode: 0o711").expect("yaml");
        assert!(matches!(value.dest_mode, Some(ModeValue::Int(0o711))));
    }

    #[test]
    fn a_decimal_mode_warns() {
        let mut warnings = Vec::new();
        assert_eq!(
            dest_mode(ModeValue::Int(755), &mut warnings).expect("mode"),
            755
        );
        assert!(warnings[0].contains("decimal"), "{warnings:?}");
    }

    #[test]
    fn unknown_keys_warn_and_strategy_is_checked() {
        let m = parse_ok("commands:\n  sucess: [ x ]\nfoo: 1\n");
        assert_eq!(m.warnings.len(), 2, "{:?}", m.warnings);
        let err = parse("sync_strategy: scp\n", &no_vars).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid strategy name \"scp\" in sync_strategy: use rsync or mv"
        );
    }

    #[test]
    fn quoted_colons_are_strings_and_unquoted_ones_are_yaml_errors() {
        let m = parse_ok("commands:\n  pre:\n    - \"echo ':foo: bar'\"\n");
        assert_eq!(m.commands.pre, vec!["echo ':foo: bar'".to_owned()]);
        let err = parse("commands:\n  pre:\n    - echo \":foo: bar\"\n", &no_vars).unwrap_err();
        assert!(matches!(err, ManifestError::Value(_)), "{err}");
        assert!(
            err.to_string().contains("must be quoted as a whole"),
            "{err}"
        );
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused_at_once() {
        // `{a: ` 100,000 times took minutes of CPU in serde_norway (its scanner looks at every
        // open collection for every token); 20,000 take seconds, and no time now.
        for deep in [
            format!("a: {}1{}\n", "{a: ".repeat(20_000), "}".repeat(20_000)),
            format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
        ] {
            let start = std::time::Instant::now();
            let err = parse(&deep, &no_vars).unwrap_err();
            let took = start.elapsed();
            assert_eq!(
                err.to_string(),
                "manifest nests deeper than 64 levels at line 1: a manifest is a few levels deep, check how it was generated"
            );
            assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
        }
    }

    #[test]
    fn the_app_section_is_checked_with_the_manifest() {
        let manifest = |listen: &str| {
            format!(
                "src: file:///a.tar.gz\nchecksum: {}\ndest: /srv/shop\napp:\n  name: shop\n  run: ./shop\n  listen: {listen}\n",
                "0".repeat(64)
            )
        };
        let m = parse_ok(&manifest("127.0.0.1:8080"));
        assert_eq!(
            m.files.and_then(|f| f.app).map(|a| a.name).as_deref(),
            Some("shop")
        );
        let err = parse(&manifest("nowhere:8080"), &no_vars).unwrap_err();
        assert!(matches!(err, ManifestError::App(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "app: listen \"nowhere:8080\" of shop is not an address like 0.0.0.0:8080"
        );
    }

    #[test]
    fn typed_errors_name_the_field() {
        let err = parse("commands:\n  pre: 3\n", &no_vars).unwrap_err();
        assert!(err.to_string().contains("commands.pre"), "{err}");
    }
}
