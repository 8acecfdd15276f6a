//! `cutover apply URL|PATH`: the agent's deploy for a manifest named on the command line, without
//! stdin and without replay protection (there is no event to replay).

use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use super::agent::{execute, exit_code, run_log, DeployFlags};
use super::GlobalArgs;
use crate::agent::input::Event;
use crate::agent::{Mode, Outcome};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Manifest URL (s3://, http://, https://, file://) or a local path
    #[arg(value_name = "URL|PATH")]
    pub manifest: String,
    /// Only stage the release: fetch, verify and unpack an `app:` release into
    /// dest/releases/VERSION, run no hook and leave the live release serving; `cutover apply`
    /// of the same manifest later switches to it without downloading again
    #[arg(long)]
    pub stage_only: bool,
    #[command(flatten)]
    pub deploy: DeployFlags,
}

pub fn run(args: ApplyArgs, global: &GlobalArgs) -> ExitCode {
    let log = run_log(global);
    let url = match manifest_url(&args.manifest) {
        Ok(url) => url,
        Err(msg) => {
            log.error(msg);
            return exit_code(Outcome::Failed);
        }
    };
    let event = Event {
        url,
        identity: None,
    };
    let mode = if args.stage_only {
        Mode::StageOnly
    } else {
        Mode::Deploy
    };
    exit_code(execute(&event, &args.deploy, false, mode, global, &log))
}

/// A URL stays as is; a local path becomes `file://` + its absolute path.
fn manifest_url(arg: &str) -> Result<String, String> {
    if arg.contains("://") {
        return Ok(arg.to_owned());
    }
    let absolute = Path::new(arg)
        .canonicalize()
        .ok()
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            format!("manifest {arg} not found: give an existing file or a URL (s3://, https://, file://)")
        })?;
    Ok(format!("file://{}", absolute.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pass_and_paths_become_file_urls() {
        assert_eq!(manifest_url("s3://b/k.yml").as_deref(), Ok("s3://b/k.yml"));
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let url = manifest_url(file.path().to_str().expect("utf-8")).expect("exists");
        let canonical = file.path().canonicalize().expect("canonical");
        assert_eq!(url, format!("file://{}", canonical.display()));
        assert!(manifest_url("/nonexistent/m.yml")
            .unwrap_err()
            .contains("not found"));
    }
}
