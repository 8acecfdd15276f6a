//! `cutover demo` (the README's main job) and the hidden `cutover demo-app` it deploys.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

/// The tour's knobs; by default it works in a fresh temp dir and removes it afterwards.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Work in this directory (created if missing, kept afterwards) instead of a temp dir
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
    /// Keep the temp directory (state, logs, releases) for a look afterwards
    #[arg(long)]
    pub keep: bool,
    /// Concurrent clients sending requests while v2 replaces v1
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub clients: usize,
}

/// The demo app's flags; each also reads an environment variable, so a manifest's `env:` can
/// inject a fault without changing the `run` line.
#[derive(Debug, Args)]
pub struct DemoAppArgs {
    /// Port to listen on
    #[arg(long, env = "PORT")]
    pub port: u16,
    /// Address to listen on
    #[arg(long, env = "DEMO_HOST", default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Version shown by `GET /`
    #[arg(long, env = "DEMO_VERSION", default_value = "dev")]
    pub version_label: String,
    /// Exit with status 3 at once (a release that cannot start)
    #[arg(long, env = "DEMO_FAIL_BOOT", value_parser = clap::builder::FalseyValueParser::new())]
    pub fail_boot: bool,
    /// Answer /healthz with 500 for ever
    #[arg(long, env = "DEMO_NEVER_HEALTHY", value_parser = clap::builder::FalseyValueParser::new())]
    pub never_healthy: bool,
    /// Exit with status 1 this many seconds after starting to serve
    #[arg(long, env = "DEMO_CRASH_AFTER", value_name = "SECS")]
    pub crash_after: Option<f64>,
    /// Share of `GET /` answered with 500, from 0.0 to 1.0
    #[arg(long, env = "DEMO_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Milliseconds to wait before listening (a slow boot)
    #[arg(long, env = "DEMO_BOOT_DELAY", value_name = "MS", default_value_t = 0)]
    pub boot_delay: u64,
    /// Milliseconds to wait before answering `GET /` (a slow release)
    #[arg(long, env = "DEMO_DELAY", value_name = "MS", default_value_t = 0)]
    pub delay: u64,
    /// Share of connections asking `GET /` that are reset unanswered, from 0.0 to 1.0
    #[arg(long, env = "DEMO_DROP_RATE", default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Speak HTTP/2 without TLS only (prior knowledge), as a gRPC server does
    #[arg(long, env = "DEMO_H2C", value_parser = clap::builder::FalseyValueParser::new())]
    pub h2c: bool,
    /// Serve HTTP/2 over TLS only (ALPN h2) with this certificate chain (PEM); needs --tls-key
    #[arg(long, env = "DEMO_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, env = "DEMO_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The gRPC status the echo method `/cutover.demo.Echo/Say` answers with (0: OK)
    #[arg(
        long,
        env = "DEMO_GRPC_STATUS",
        value_name = "CODE",
        default_value_t = 0
    )]
    pub grpc_status: u32,
}

/// Runs the tour; exit 0 only when both deploys went through and no request failed. The tour
/// brings its own supervisor and socket, so the global `--socket`/`--state-dir` do not apply.
pub fn run(args: DemoArgs, global: &GlobalArgs) -> ExitCode {
    let _ = global;
    let opts = crate::demo::tour::TourOptions {
        dir: args.dir,
        keep: args.keep,
        clients: args.clients.max(1),
    };
    match crate::demo::tour::run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("cutover demo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run_app(args: DemoAppArgs) -> ExitCode {
    let crash_after = match args.crash_after.map(std::time::Duration::try_from_secs_f64) {
        None => None,
        Some(Ok(after)) => Some(after),
        Some(Err(_)) => {
            eprintln!("demo-app: --crash-after must be a positive number of seconds");
            return ExitCode::from(2);
        }
    };
    let config = crate::demo::app::Config {
        addr: std::net::SocketAddr::new(args.host, args.port),
        version: args.version_label,
        fail_boot: args.fail_boot,
        never_healthy: args.never_healthy,
        crash_after,
        error_rate: args.error_rate,
        boot_delay: std::time::Duration::from_millis(args.boot_delay),
        delay: std::time::Duration::from_millis(args.delay),
        drop_rate: args.drop_rate,
        h2c: args.h2c,
        tls: args.tls_cert.zip(args.tls_key),
        grpc_status: args.grpc_status,
    };
    ExitCode::from(crate::demo::app::run(config))
}
