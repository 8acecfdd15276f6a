//! The trusted keys (`Trust`): minisign public keys listed under `trusted_keys` in a YAML file,
//! each picked by the key id a signature names.
//!
//! The file is `/etc/cutover/trust.yml`, or the one `--trust FILE` / `CUTOVER_TRUST` names. A
//! fixed path owned by root is the switch on purpose: whoever can send a deploy event or write a
//! manifest can change neither the agent's flags nor this file, so cannot turn checking off. A
//! file named explicitly must exist; the default one is used when present. A file that exists but
//! cannot be read or has no key refuses every manifest (it never falls back to unsigned).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;

use super::error::TrustError;

/// Where the trusted keys are looked for when neither `--trust` nor `CUTOVER_TRUST` is set.
pub const DEFAULT_TRUST_FILE: &str = "/etc/cutover/trust.yml";

/// Whether this host deploys only signed manifests, and whose.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// No trusted keys: manifests are deployed unsigned, as stretcher does.
    #[default]
    Unsigned,
    /// Only manifests signed by one of these keys are deployed.
    Keys(Arc<TrustedKeys>),
}

/// The keys of one trust file.
#[derive(Debug)]
pub struct TrustedKeys {
    /// The file they came from, named in errors.
    pub path: PathBuf,
    keys: Vec<TrustedKey>,
}

#[derive(Debug)]
struct TrustedKey {
    id: [u8; 8],
    key: minisign_verify::PublicKey,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    trusted_keys: Vec<String>,
}

impl Trust {
    /// The keys in `explicit` (which must exist), else in [`DEFAULT_TRUST_FILE`] if it exists.
    pub fn load(explicit: Option<&Path>) -> Result<Trust, TrustError> {
        let path = match explicit {
            Some(path) => path.to_path_buf(),
            None if Path::new(DEFAULT_TRUST_FILE).exists() => PathBuf::from(DEFAULT_TRUST_FILE),
            None => return Ok(Trust::Unsigned),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| TrustError::ReadKeys {
            path: path.clone(),
            source,
        })?;
        let keys = TrustedKeys::parse(&path, &text)?;
        Ok(Trust::Keys(Arc::new(keys)))
    }

    /// The keys, when manifests must be signed.
    pub fn keys(&self) -> Option<&TrustedKeys> {
        match self {
            Trust::Unsigned => None,
            Trust::Keys(keys) => Some(keys),
        }
    }
}

impl TrustedKeys {
    /// Reads a trust file's text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<TrustedKeys, TrustError> {
        let bad = |reason: String| TrustError::BadKeys {
            path: path.to_path_buf(),
            reason,
        };
        let file: File = serde_norway::from_str(text).map_err(|e| bad(e.to_string()))?;
        if file.trusted_keys.is_empty() {
            return Err(bad(
                "the list is empty, so no manifest could ever be deployed (remove the file to deploy unsigned manifests)".into(),
            ));
        }
        let mut keys = Vec::new();
        for entry in &file.trusted_keys {
            // The whole minisign.pub (comment line and key) pasted as a block works too.
            let line = entry.lines().map(str::trim).rfind(|l| !l.is_empty());
            let line = line.unwrap_or_default();
            let key = minisign_verify::PublicKey::from_base64(line)
                .map_err(|e| bad(format!("{line:?} is not a minisign public key ({e:?})")))?;
            let id = key_id_of(line, 42).map_err(|e| bad(format!("{line:?}: {e}")))?;
            keys.push(TrustedKey { id, key });
        }
        Ok(TrustedKeys {
            path: path.to_path_buf(),
            keys,
        })
    }

    /// The key with this id, if it is trusted.
    pub fn find(&self, id: &[u8; 8]) -> Option<&minisign_verify::PublicKey> {
        self.keys.iter().find(|k| &k.id == id).map(|k| &k.key)
    }

    /// The ids of the trusted keys, as minisign prints them.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| key_id_hex(&k.id)).collect()
    }
}

/// The key id inside a base64 minisign key or signature line of `len` decoded bytes: two bytes of
/// algorithm, then the eight of the id.
pub fn key_id_of(base64_line: &str, len: usize) -> Result<[u8; 8], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64_line.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    if bytes.len() != len {
        return Err(format!("{} bytes where minisign writes {len}", bytes.len()));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[2..10]);
    Ok(id)
}

/// A key id as minisign prints it (`minisign public key E7620F1842B4E81F`): the bytes reversed,
/// in upper-case hex.
pub fn key_id_hex(id: &[u8; 8]) -> String {
    let mut reversed = *id;
    reversed.reverse();
    hex::encode_upper(reversed)
}

#[cfg(test)]
mod tests {
    use super::*;

    // minisign's own example key (the README of minisign-verify).
    const KEY: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";

    #[test]
    fn keys_are_read_and_named_by_their_id_as_minisign_prints_it() {
        let keys = TrustedKeys::parse(Path::new("t.yml"), &format!("trusted_keys: [{KEY}]"))
            .expect("parses");
        assert_eq!(keys.ids(), ["E7620F1842B4E81F"]);
        let pub_file = format!(
            "trusted_keys:\n  - |\n    untrusted comment: minisign public key E7620F1842B4E81F\n    {KEY}\n"
        );
        let keys = TrustedKeys::parse(Path::new("t.yml"), &pub_file).expect("a .pub block");
        assert_eq!(keys.ids(), ["E7620F1842B4E81F"]);
    }

    #[test]
    fn the_example_trust_file_reads() {
        let text = include_str!("../../../manifests/trust.yml");
        let keys = TrustedKeys::parse(Path::new("manifests/trust.yml"), text).expect("parses");
        assert_eq!(keys.ids(), ["E7620F1842B4E81F"]);
    }

    #[test]
    fn an_empty_list_a_typo_or_a_bad_key_is_an_error_not_unsigned_mode() {
        for text in [
            "trusted_keys: []",
            "trusted_key: [RWQ]",
            "trusted_keys: [RWQnotakey]",
        ] {
            let err = TrustedKeys::parse(Path::new("t.yml"), text).unwrap_err();
            assert!(err.to_string().starts_with("trusted keys t.yml: "), "{err}");
        }
    }

    #[test]
    fn an_explicit_file_must_exist() {
        let err = Trust::load(Some(Path::new("/nonexistent/trust.yml"))).unwrap_err();
        assert!(
            err.to_string().contains("could not read the trusted keys"),
            "{err}"
        );
    }
}
