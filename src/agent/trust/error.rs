//! Why a manifest is not trusted (`TrustError`): one line each, naming what failed and what to do.
//! Every one of them ends the run before the manifest's YAML is used, so no hook of it runs.

use std::path::PathBuf;

use crate::agent::source::FetchError;

/// The agent's exit code when it refused a manifest that is not trusted (never under `consul
/// watch`, where every exit is 0), so that `cutover watch` and the Serf worker can tell it apart.
pub const EXIT_UNTRUSTED: u8 = 8;

/// Why a manifest was refused, or the trusted keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("could not read the trusted keys {path}: {source}: fix its permissions, or point --trust (CUTOVER_TRUST) at the right file")]
    ReadKeys {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("trusted keys {path}: {reason}: write `trusted_keys:` and a list of minisign public keys (the RW… line of minisign.pub)")]
    BadKeys { path: PathBuf, reason: String },
    #[error("manifest is not signed: could not fetch its signature: {source}; with trusted keys every manifest needs one: `minisign -S -s KEY -t 'cutover app=APP version=VERSION expires=…' -m MANIFEST` and upload MANIFEST.minisig beside it")]
    NoSignature {
        #[source]
        source: FetchError,
    },
    #[error("signature {url} is not a minisign signature ({reason}): sign the manifest again with minisign -S")]
    Malformed { url: String, reason: String },
    #[error("signature {url} was made by key {key_id}, which is not among the trusted keys in {keys}: sign with a trusted key, or add its public key there")]
    UnknownKey {
        url: String,
        key_id: String,
        keys: PathBuf,
    },
    #[error("signature {url} does not match the manifest (key {key_id}): the manifest or its trusted comment changed after signing; sign it again")]
    BadSignature { url: String, key_id: String },
    #[error("signature {url} uses minisign's legacy format: sign again without -l")]
    Legacy { url: String },
    #[error("signature {url} has no cutover trusted comment ({reason}); found {found:?}: sign with -t 'cutover app=APP version=VERSION expires=2026-12-31T00:00:00Z'")]
    NoComment {
        url: String,
        reason: String,
        found: String,
    },
    #[error("manifest was signed for {app} {version} until {expires}, which has passed: sign it again with a later expires=")]
    Expired {
        app: String,
        version: String,
        expires: String,
    },
    #[error(
        "manifest is signed for app {signed} but its app.name is {named}: sign it with app={named}"
    )]
    OtherApp { signed: String, named: String },
    #[error("manifest is signed as {app} version {signed} but its app.version is {named}: sign it with version={named}")]
    OtherVersion {
        app: String,
        signed: String,
        named: String,
    },
    #[error("manifest is {app} {version}, older than {last} deployed here at {at}: signed manifests never go back (a replay or a downgrade); use `cutover rollback {app}`, or sign the old release again as a newer version")]
    Downgrade {
        app: String,
        version: String,
        last: String,
        at: String,
    },
    #[error("manifest has an {algorithm} checksum, refused with trusted keys (it can be forged): use the archive's sha256 or sha512")]
    WeakChecksum { algorithm: String },
    #[error("could not read the record of what was deployed {path}: {reason}: remove it to accept any signed version of the app")]
    BadRecord { path: PathBuf, reason: String },
}
