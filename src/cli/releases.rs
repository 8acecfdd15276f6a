//! `cutover releases APP [--json]`: the releases kept on disk and which is live, previous or bad.

use std::process::ExitCode;

use clap::Args;

use super::remote::{self, or_dash};
use super::GlobalArgs;
use crate::protocol::{ReleaseState, ReleasesRequest, Request, Response};

#[derive(Debug, Args)]
pub struct ReleasesArgs {
    /// The app
    pub app: String,
    /// Print the list as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ReleasesArgs, global: &GlobalArgs) -> ExitCode {
    let request = Request::Releases(ReleasesRequest { app: args.app });
    let list = match remote::call(global, request, |_| {}) {
        Ok(Response::Releases(list)) => list,
        Ok(other) => return remote::unexpected("releases", &other),
        Err(code) => return code,
    };
    if args.json {
        return remote::print_json(&list);
    }
    if list.releases.is_empty() {
        println!("{} has no releases on disk", list.app);
        return ExitCode::SUCCESS;
    }
    let rows: Vec<Vec<String>> = list
        .releases
        .iter()
        .map(|r| {
            vec![
                r.version.clone(),
                state_name(r.state).to_owned(),
                or_dash(r.deployed_at.as_ref()),
                or_dash(r.reason.as_ref()),
                r.dir.display().to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        remote::table(
            "",
            &["VERSION", "STATE", "DEPLOYED AT", "REASON", "DIR"],
            &rows
        )
    );
    ExitCode::SUCCESS
}

fn state_name(state: ReleaseState) -> &'static str {
    match state {
        ReleaseState::Live => "live",
        ReleaseState::Previous => "previous",
        ReleaseState::Kept => "kept",
        ReleaseState::Bad => "bad",
    }
}
