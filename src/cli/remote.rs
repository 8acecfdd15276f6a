//! What the verbs that talk to the supervisor share: one request on a small runtime, the mapping
//! of failures to exit codes, and plain text tables.
//!
//! Connection failures exit 1 with the client's message; errors the supervisor reports exit with
//! their kind's code (`ErrorKind::exit_code`), so scripts can tell "no such app" from "busy".

use std::process::ExitCode;

use crate::protocol::client::Client;
use crate::protocol::{Progress, Request, Response};

use super::GlobalArgs;

/// Sends `request` to the supervisor, hands progress lines to `on_progress`, and returns its
/// answer; failures are printed here and come back as the exit code to end with.
pub fn call(
    global: &GlobalArgs,
    request: Request,
    on_progress: impl FnMut(&Progress),
) -> Result<Response, ExitCode> {
    let socket = global.socket();
    // A current-thread runtime is plenty for one connection, and starts no worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| {
            eprintln!("cutover: could not start the async runtime: {err}");
            ExitCode::FAILURE
        })?;
    let answer = runtime.block_on(async {
        let client = Client::connect(&socket).await?;
        client.request(&request, on_progress).await
    });
    match answer {
        Ok(Response::Error(err)) => {
            eprintln!("cutover: {}", err.message);
            Err(ExitCode::from(err.kind.exit_code()))
        }
        Ok(response) => Ok(response),
        Err(err) => {
            eprintln!("cutover: {err}");
            Err(ExitCode::from(err.exit_code()))
        }
    }
}

/// The exit for an answer of the wrong kind: only a mismatched supervisor sends one.
pub fn unexpected(verb: &str, response: &Response) -> ExitCode {
    eprintln!(
        "cutover: the supervisor answered `{verb}` with something else ({response:?}): run the \
         same cutover version for the CLI and the supervisor"
    );
    ExitCode::from(crate::protocol::ErrorKind::Internal.exit_code())
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> ExitCode {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("cutover: could not encode the answer as JSON: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Left-aligned columns separated by two spaces; every line gets `indent` in front.
pub fn table(indent: &str, header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = indent.to_owned();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `-` for an absent value, so columns never collapse.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let rows = vec![
            vec!["shop".to_owned(), "1.4.2".to_owned()],
            vec!["a".to_owned(), "-".to_owned()],
        ];
        assert_eq!(
            table("", &["APP", "LIVE"], &rows),
            "APP   LIVE\nshop  1.4.2\na     -\n"
        );
    }
}
