//! Signed manifests: with trusted keys configured, a manifest is deployed only when a trusted
//! minisign key signed its exact bytes, for its app and a version not older than the one deployed
//! here, before an expiry the signer chose.
//!
//! Order (`agent::load_manifest`): fetch the manifest → fetch `URL.minisig` → `verify` (the key
//! by its id from `keys`, the signature, the trusted comment read by `comment`) → not a downgrade
//! (`deployed`, the record of what was deployed) → only then is the YAML parsed; the parsed
//! manifest is held to the comment (`check_manifest`: its app, its version, a sha256/sha512
//! checksum). `error` names every refusal with what to do.

pub mod comment;
pub mod deployed;
pub mod error;
pub mod keys;
pub mod order;
pub mod verify;

pub use comment::SignedRelease;
pub use error::{TrustError, EXIT_UNTRUSTED};
pub use keys::{Trust, TrustedKeys, DEFAULT_TRUST_FILE};
pub use verify::{check_manifest, signature_url, verify};
