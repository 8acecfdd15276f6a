//! How cutover's own diagnostics reach stderr (`--log-format`): readable lines (`text`, the
//! default) or one JSON object per line (`json`, for log shippers), for the supervisor, the
//! watcher and the agent alike.
//!
//! JSON lines are tracing-subscriber's: `timestamp`, `level`, `target`, `message` and the event's
//! own fields at the top level (`app`, `backend`, …), and the current span's under `span`.

use std::fmt::Display;

use clap::ValueEnum;

/// The format of the log lines on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines, as before `--log-format` existed.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Sets up the tracing subscriber for the whole process: `RUST_LOG` filters (`cutover=info`
/// unless set), `format` shapes each line.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("cutover=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// A verb's last words before it exits with an error: `VERB: MESSAGE` as a plain line, or an
/// error event naming the verb in JSON, so that even this line parses.
pub fn fatal(format: LogFormat, verb: &str, message: impl Display) {
    match format {
        LogFormat::Text => eprintln!("{verb}: {message}"),
        LogFormat::Json => tracing::error!(target: "cutover::cli", verb, "{message}"),
    }
}
