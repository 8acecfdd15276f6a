//! App mode: a manifest with an `app:` section becomes a release directory under
//! `dest/releases/<version>` and a deploy request to the supervisor, whose result the agent awaits.
//!
//! Releases are immutable once in place: the staged tree is renamed in whole (same filesystem, so
//! the rename is atomic and a running instance never sees a half-written release), and a version
//! that is already on disk is kept as it is. The supervisor, not the agent, swaps `current`.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::Context;

use super::log::RunLog;
use super::pipeline::Staged;
use crate::protocol::client::Client;
use crate::protocol::{layout, AppSpec, DeployRequest, Request, Response};

/// How many hex digits of the archive's digest name a release when the manifest gives no version.
const DIGEST_VERSION_LEN: usize = 12;

/// Everything the agent hands over for one app release.
#[derive(Debug)]
pub struct AppRelease<'a> {
    pub app: &'a AppSpec,
    /// The app's home: `releases/`, `current`, `shared/` live here.
    pub dest: &'a Path,
    /// The verified, unpacked archive.
    pub staged: Staged,
    /// The supervisor's control socket.
    pub socket: &'a Path,
}

/// Why a release could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(
        "app version {0:?} cannot name a release directory: use letters, digits, '.', '_', '-' and \
         '+', not starting with '.'"
    )]
    BadVersion(String),
    #[error(
        "shared entry {0:?} must be a relative path inside the release without '..' (e.g. log, \
         tmp/pids)"
    )]
    BadSharedEntry(String),
    #[error("could not {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Moves the staged tree into `dest/releases/<version>`, asks the supervisor to roll it out,
/// logs the rollout's progress and returns when it has succeeded or failed.
pub async fn deploy(release: AppRelease<'_>, log: &RunLog) -> anyhow::Result<()> {
    let AppRelease {
        app,
        dest,
        staged,
        socket,
    } = release;
    let version = release_version(app, &staged.digest_hex)?;
    // The supervisor runs in another directory: hand it an absolute home.
    let dest = std::fs::canonicalize(dest).map_err(|e| io_error("resolve", dest, e))?;
    place(&dest, &version, staged, &app.shared, log)?;
    request_rollout(app, dest, &version, socket, log).await
}

/// Asks the supervisor on `socket` to roll out the release already in `dest/releases/VERSION`
/// (`dest` absolute), logs the rollout's progress and returns when it has succeeded or failed.
pub async fn request_rollout(
    app: &AppSpec,
    dest: PathBuf,
    version: &str,
    socket: &Path,
    log: &RunLog,
) -> anyhow::Result<()> {
    let version = version.to_owned();
    log.line(format!(
        "asking the supervisor on {} to roll out {} {version}",
        socket.display(),
        app.name
    ));
    let client = Client::connect(socket).await?;
    let request = Request::Deploy(DeployRequest {
        app: app.clone(),
        version: version.clone(),
        dest,
    });
    let response = client
        .request(&request, |progress| log.line(&progress.message))
        .await?;
    match response {
        Response::Deployed(outcome) => {
            match outcome.previous {
                Some(previous) => log.line(format!(
                    "{} {} is live (was {previous})",
                    outcome.app, outcome.version
                )),
                None => log.line(format!("{} {} is live", outcome.app, outcome.version)),
            }
            Ok(())
        }
        Response::Error(err) => anyhow::bail!(
            "rollout of {} {version} failed: {}",
            app.name,
            err.message
        ),
        other => anyhow::bail!(
            "rollout of {} {version}: the supervisor gave an unexpected answer ({other:?}): run the \
             same cutover version for the agent and the supervisor",
            app.name
        ),
    }
}

/// The release's version: the manifest's, or the start of the archive's digest.
pub fn release_version(app: &AppSpec, digest_hex: &str) -> Result<String, ReleaseError> {
    let version = match &app.version {
        Some(version) => version.clone(),
        None => digest_hex.chars().take(DIGEST_VERSION_LEN).collect(),
    };
    if layout::valid_version(&version) {
        Ok(version)
    } else {
        Err(ReleaseError::BadVersion(version))
    }
}

/// Puts the staged tree at `dest/releases/<version>` and links the shared entries into it, or
/// keeps the release already there.
pub fn place(
    dest: &Path,
    version: &str,
    staged: Staged,
    shared: &[String],
    log: &RunLog,
) -> anyhow::Result<()> {
    for entry in shared {
        check_shared_entry(entry)?;
    }
    let releases = layout::releases_dir(dest);
    std::fs::create_dir_all(&releases).map_err(|e| io_error("create", &releases, e))?;
    let target = layout::release_dir(dest, version);
    if target.symlink_metadata().is_ok() {
        // Releases are immutable: the same version is the same code, and it may be live now.
        log.line(format!(
            "release {version} is already in {}: keeping it as it is (releases never change once \
             placed)",
            target.display()
        ));
        return Ok(());
    }
    std::fs::rename(staged.path(), &target).with_context(|| {
        format!(
            "moving the unpacked release {} to {} (the staging directory must be inside dest)",
            staged.path().display(),
            target.display()
        )
    })?;
    // The tree has moved; its temp dir must no longer try to delete it.
    let _ = staged.dir.keep();
    relax_staging_mode(&target)?;
    log.line(format!("placed release {version} in {}", target.display()));
    for entry in shared {
        link_shared(dest, &target, entry)?;
    }
    Ok(())
}

/// Staging directories are created 0700; a release root should be as readable as a plain dest
/// (stretcher's default mode 0755). A mode the archive chose on purpose is left alone.
fn relax_staging_mode(dir: &Path) -> Result<(), ReleaseError> {
    let meta = dir.metadata().map_err(|e| io_error("inspect", dir, e))?;
    if meta.permissions().mode() & 0o7777 == 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io_error("set the mode of", dir, e))?;
    }
    Ok(())
}

fn check_shared_entry(entry: &str) -> Result<(), ReleaseError> {
    let path = Path::new(entry);
    let normal = path.components().all(|c| matches!(c, Component::Normal(_)));
    if entry.is_empty() || !normal {
        return Err(ReleaseError::BadSharedEntry(entry.to_owned()));
    }
    Ok(())
}

/// Makes `release/<entry>` a link to `dest/shared/<entry>`, creating the shared directory when it
/// is missing and replacing whatever the archive had at that place.
fn link_shared(dest: &Path, release: &Path, entry: &str) -> Result<(), ReleaseError> {
    let shared = layout::shared_dir(dest).join(entry);
    if shared.symlink_metadata().is_err() {
        std::fs::create_dir_all(&shared).map_err(|e| io_error("create", &shared, e))?;
    }
    let link = release.join(entry);
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error("create", parent, e))?;
    }
    match link.symlink_metadata() {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&link),
        Ok(_) => std::fs::remove_file(&link),
        Err(_) => Ok(()),
    }
    .map_err(|e| io_error("replace", &link, e))?;
    // Relative, so the app's home can be moved or mounted elsewhere without breaking the links:
    // from releases/<v>/a/b up to dest is (2 + depth of the entry's parent) steps.
    let depth = Path::new(entry).components().count() + 1;
    let target = PathBuf::from("../".repeat(depth))
        .join("shared")
        .join(entry);
    std::os::unix::fs::symlink(&target, &link).map_err(|e| io_error("link", &link, e))
}

fn io_error(what: &'static str, path: &Path, source: io::Error) -> ReleaseError {
    ReleaseError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(version: Option<&str>) -> AppSpec {
        serde_norway::from_str(&format!(
            "name: shop\nrun: ./shop\nlisten: 127.0.0.1:1\n{}",
            version
                .map(|v| format!("version: \"{v}\"\n"))
                .unwrap_or_default()
        ))
        .expect("spec")
    }

    fn staged(parent: &Path, file: &str) -> Staged {
        let dir = tempfile::TempDir::new_in(parent).expect("staging dir");
        std::fs::write(dir.path().join(file), "x").unwrap();
        Staged {
            dir,
            digest_hex: "0123456789abcdef0123".into(),
            bytes: 1,
            format: crate::agent::unpack::Format::Tar,
            root_mode: None,
        }
    }

    #[test]
    fn the_version_defaults_to_the_digest_and_must_be_a_plain_name() {
        assert_eq!(
            release_version(&spec(None), "0123456789abcdef").unwrap(),
            "0123456789ab"
        );
        assert_eq!(
            release_version(&spec(Some("1.4.2")), "00").unwrap(),
            "1.4.2"
        );
        let err = release_version(&spec(Some("../etc")), "00").unwrap_err();
        assert!(
            err.to_string().contains("cannot name a release directory"),
            "{err}"
        );
    }

    #[test]
    fn a_release_is_placed_once_and_shared_entries_are_linked() {
        let dest = tempfile::tempdir().unwrap();
        let log = RunLog::quiet(1 << 16);
        let first = staged(dest.path(), "a.txt");
        // The archive brought its own `log` dir: the shared link must replace it.
        std::fs::create_dir(first.path().join("log")).unwrap();
        let shared = vec!["log".to_owned(), "tmp/pids".to_owned()];
        place(dest.path(), "v1", first, &shared, &log).unwrap();

        let release = dest.path().join("releases/v1");
        assert!(release.join("a.txt").is_file());
        assert_eq!(
            std::fs::read_link(release.join("tmp/pids")).unwrap(),
            Path::new("../../../shared/tmp/pids")
        );
        std::fs::write(release.join("log/app.log"), "hello").unwrap();
        assert!(dest.path().join("shared/log/app.log").is_file());

        // The same version again keeps the first tree and drops the new one.
        let second = staged(dest.path(), "b.txt");
        let second_dir = second.path().to_path_buf();
        place(dest.path(), "v1", second, &shared, &log).unwrap();
        assert!(!release.join("b.txt").exists());
        assert!(!second_dir.exists(), "the unused staging dir is removed");
        assert!(log.contents().contains("keeping it as it is"));
    }

    #[test]
    fn a_shared_entry_may_not_climb_out() {
        for bad in ["../x", "/etc", "a/../../b", ""] {
            assert!(check_shared_entry(bad).is_err(), "{bad}");
        }
        assert!(check_shared_entry("tmp/pids").is_ok());
    }
}
