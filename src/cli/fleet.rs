//! `cutover rollout`, `cutover serf-handler` and `cutover fleet-status`: the fleet verbs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::GlobalArgs;
use crate::fleet::manifest::{self, Release};
use crate::fleet::node::Node;
use crate::fleet::plan::Plan;
use crate::fleet::rollout::{self, Options, Progress, Report, Step};
use crate::fleet::serf::Serf;
use crate::fleet::{catchup, handler, status, worker};

/// Exit code of a rollout that finished but could not reach every node.
const EXIT_UNREACHABLE: u8 = 3;

/// How to reach the local Serf agent.
#[derive(Debug, Clone, Args)]
pub struct SerfArgs {
    /// RPC address of the Serf agent [default: $SERF_RPC_ADDR, else 127.0.0.1:7373]
    #[arg(long, value_name = "HOST:PORT")]
    pub rpc_addr: Option<String>,
    /// RPC auth token of the Serf agent [default: $SERF_RPC_AUTH]
    #[arg(long, value_name = "TOKEN", hide_env_values = true)]
    pub rpc_auth: Option<String>,
    /// The `serf` program
    #[arg(
        long,
        env = "CUTOVER_SERF_BIN",
        default_value = "serf",
        value_name = "PATH"
    )]
    pub serf_bin: PathBuf,
}

impl SerfArgs {
    fn serf(&self) -> Serf {
        Serf::new(
            self.serf_bin.clone(),
            self.rpc_addr.clone(),
            self.rpc_auth.clone(),
        )
    }
}

#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// Manifest URL (or path) every node deploys; the manifest needs an `app:` section
    #[arg(required_unless_present = "plan", conflicts_with = "plan")]
    pub url: Option<String>,
    /// A plan file of several apps with `depends_on`, rolled out in dependency order
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Only members with this tag (`key=regexp`, anchored); repeat to require several
    #[arg(long = "tag", value_name = "KEY=REGEXP")]
    pub tags: Vec<String>,
    /// Nodes deploying at the same time
    #[arg(long, default_value_t = 1)]
    pub max_parallel: usize,
    /// Nodes that must keep serving the app while a batch is out
    #[arg(long, default_value_t = 0)]
    pub min_healthy: usize,
    /// Failed nodes tolerated before the rollout halts and reverts the nodes it updated (a node
    /// that cannot stage counts too)
    #[arg(long, default_value_t = 0)]
    pub max_failures: usize,
    /// Nodes that must hold the release (staged now, or already serving it) before the first
    /// switch; fewer, and the rollout halts with nothing switched
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub min_staged: usize,
    /// Stage on every node and stop: switch later by running the same rollout without it
    #[arg(long)]
    pub stage_only: bool,
    /// Show the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON document at the end ({"steps": [...]}: each app's plan and outcome);
    /// the plan text and progress lines go to stderr
    #[arg(long)]
    pub json: bool,
    /// How long one node may take to serve the new version (e.g. 90s, 5m)
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// A node silent this long is reported unreachable and the rollout goes on without it
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub unreachable_after: Duration,
    /// Timeout of each Serf query
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub query_timeout: Duration,
    /// The app the manifest deploys, when the coordinator cannot read it (e.g. s3:// URLs)
    #[arg(long, requires = "version", conflicts_with = "plan")]
    pub app: Option<String>,
    /// The version the manifest deploys (with --app)
    #[arg(long, requires = "app")]
    pub version: Option<String>,
    #[command(flatten)]
    pub serf: SerfArgs,
}

pub fn rollout(args: RolloutArgs, _global: &GlobalArgs) -> ExitCode {
    block_on(rollout_async(args))
}

async fn rollout_async(args: RolloutArgs) -> ExitCode {
    let serf = args.serf.serf();
    let opts = Options {
        tags: args.tags.clone(),
        max_parallel: args.max_parallel,
        min_healthy: args.min_healthy,
        max_failures: args.max_failures,
        min_staged: args.min_staged,
        stage_only: args.stage_only,
        node_timeout: args.timeout,
        unreachable_after: args.unreachable_after,
        query_timeout: args.query_timeout,
        poll: Duration::from_millis(200),
    };
    let steps = match steps(&args).await {
        Ok(steps) => steps,
        Err(err) => {
            eprintln!("cutover rollout: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    // With --json, stdout carries only the document; what a person reads goes to stderr.
    let (out, say): (Progress, fn(&str)) = if args.json {
        (Progress::on_stderr(), |text| eprint!("{text}"))
    } else {
        (Progress::default(), |text| print!("{text}"))
    };
    let mut done = Vec::new();
    let mut unreachable = false;
    let mut failed = false;
    for (i, step) in steps.iter().enumerate() {
        let r = &step.release;
        let plan = match rollout::plan(&serf, step, &opts).await {
            Ok(plan) => plan,
            Err(err) => {
                eprintln!("cutover rollout: {} {}: {err}", r.app, r.version);
                not_started(&steps[i + 1..], say);
                done.extend(steps[i..].iter().map(|s| step_json(s, None, None)));
                failed = true;
                break;
            }
        };
        say(&rollout::plan_text(step, &plan, &opts));
        if args.dry_run {
            done.push(step_json(step, Some(&plan), None));
            continue;
        }
        let report = rollout::run(&serf, step, plan.clone(), &opts, &out).await;
        say(&report_text(step, &report));
        done.push(step_json(step, Some(&plan), Some(&report)));
        if let Some(why) = &report.halted {
            eprintln!("cutover rollout: {} {} halted: {why}", r.app, r.version);
            not_started(&steps[i + 1..], say);
            done.extend(steps[i + 1..].iter().map(|s| step_json(s, None, None)));
            failed = true;
            break;
        }
        unreachable |= !report.unreachable.is_empty();
    }
    if args.json {
        let printed = super::remote::print_json(&serde_json::json!({ "steps": done }));
        if printed != ExitCode::SUCCESS {
            return printed;
        }
    }
    if failed {
        return ExitCode::FAILURE;
    }
    if unreachable {
        eprintln!("cutover rollout: finished, but some nodes could not be reached: they catch up when they rejoin");
        return ExitCode::from(EXIT_UNREACHABLE);
    }
    ExitCode::SUCCESS
}

/// How one app's rollout ended, as the lines a person reads.
fn report_text(step: &Step, report: &Report) -> String {
    let mut text = format!("{} {}:\n", step.release.app, step.release.version);
    let mut line = |label: &str, nodes: Vec<String>| {
        if !nodes.is_empty() {
            text.push_str(&format!("  {label}: {}\n", nodes.join(", ")));
        }
    };
    let named = |pairs: &[(String, String)]| -> Vec<String> {
        pairs
            .iter()
            .map(|(n, why)| format!("{n} ({why})"))
            .collect()
    };
    line("staged", report.staged.clone());
    line("updated", report.updated.clone());
    line("already current", report.current.clone());
    line("unreachable", named(&report.unreachable));
    line("failed", named(&report.failed));
    line("reverted", report.reverted.clone());
    text
}

/// One app of `cutover rollout --json`: its plan (absent when it could not be made) and its
/// outcome (absent on a dry run or when it never started). The CLI's own shape: only protocol
/// and store types derive Serialize.
fn step_json(
    step: &Step,
    plan: Option<&rollout::Plan>,
    report: Option<&Report>,
) -> serde_json::Value {
    use serde_json::json;
    let named = |pairs: &[(String, String)]| -> Vec<serde_json::Value> {
        pairs
            .iter()
            .map(|(node, why)| json!({ "node": node, "why": why }))
            .collect()
    };
    let plan = plan.map(|p| {
        let batches: Vec<Vec<serde_json::Value>> = p
            .batches
            .iter()
            .map(|batch| {
                batch
                    .iter()
                    .map(|t| json!({ "node": t.node, "previous": t.previous }))
                    .collect()
            })
            .collect();
        json!({ "batches": batches, "current": p.current, "unreachable": named(&p.unreachable) })
    });
    let outcome = report.map(|r| {
        json!({
            "staged": r.staged,
            "updated": r.updated,
            "current": r.current,
            "unreachable": named(&r.unreachable),
            "failed": named(&r.failed),
            "reverted": r.reverted,
            "halted": r.halted,
        })
    });
    json!({
        "app": step.release.app,
        "version": step.release.version,
        "plan": plan,
        "outcome": outcome,
    })
}

fn not_started(rest: &[Step], say: fn(&str)) {
    for step in rest {
        say(&format!(
            "{} {}: not started (an app it may depend on did not finish)\n",
            step.release.app, step.release.version
        ));
    }
}

/// The apps to roll out, in order: the plan's dependency order, or the one URL.
async fn steps(args: &RolloutArgs) -> anyhow::Result<Vec<Step>> {
    if let Some(path) = &args.plan {
        let mut steps = Vec::new();
        for planned in Plan::load(path)?.order()? {
            let release = manifest::read(&planned.manifest).await?;
            steps.push(Step {
                url: planned.manifest,
                release,
                tags: planned.tag,
            });
        }
        return Ok(steps);
    }
    let url = args.url.clone().unwrap_or_default();
    let release = match (&args.app, &args.version) {
        (Some(app), Some(version)) => Release {
            app: app.clone(),
            version: version.clone(),
        },
        _ => manifest::read(&url).await?,
    };
    Ok(vec![Step {
        url,
        release,
        tags: Vec::new(),
    }])
}

#[derive(Debug, Args)]
pub struct SerfHandlerArgs {
    /// Internal: deploy this manifest URL (the detached worker of a deploy query)
    #[arg(long, hide = true, value_name = "URL")]
    pub run_deploy: Option<String>,
    /// Internal: stage this manifest URL (the detached worker of a stage query)
    #[arg(long, hide = true, value_name = "URL")]
    pub run_stage: Option<String>,
    /// Internal: roll back "APP [VERSION]" (the detached worker of a rollback query)
    #[arg(long, hide = true, value_name = "APP [VERSION]")]
    pub run_rollback: Option<String>,
    /// Compare this node's versions with its peers' and deploy the majority's (run on join)
    #[arg(long)]
    pub catch_up: bool,
    #[command(flatten)]
    pub serf: SerfArgs,
}

pub fn serf_handler(args: SerfHandlerArgs, global: &GlobalArgs) -> ExitCode {
    let node = match std::env::current_exe() {
        Ok(exe) => Node {
            exe,
            state_dir: global.state_dir(),
            socket: global.socket(),
            trust: global.trust.clone(),
        },
        Err(err) => {
            eprintln!("cutover serf-handler: cannot find its own binary: {err}");
            return ExitCode::FAILURE;
        }
    };
    let serf = args.serf.serf();
    block_on(async move {
        if let Some(url) = &args.run_deploy {
            worker::deploy(&node, &serf, url).await
        } else if let Some(url) = &args.run_stage {
            worker::stage(&node, url).await
        } else if let Some(payload) = &args.run_rollback {
            worker::rollback(&node, &serf, payload).await
        } else if args.catch_up {
            catchup::run(&node, &serf).await
        } else {
            handler::run(&node, &serf).await
        }
    })
}

/// `cutover fleet-status`: the shared fleet flags and `--json` (which `status --fleet` has of
/// its own, so it is not part of `FleetStatusArgs`).
#[derive(Debug, Args)]
pub struct FleetStatusCommand {
    #[command(flatten)]
    pub args: FleetStatusArgs,
    /// Print the rows as one JSON array (node, status, app, version, health, phase, staged)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FleetStatusArgs {
    /// Only members with this tag (`key=regexp`)
    #[arg(long = "tag", value_name = "KEY=REGEXP")]
    pub tags: Vec<String>,
    /// How long nodes get to answer the status query
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub query_timeout: Duration,
    #[command(flatten)]
    pub serf: SerfArgs,
}

pub fn fleet_status(args: FleetStatusArgs, json: bool, _global: &GlobalArgs) -> ExitCode {
    let serf = args.serf.serf();
    block_on(async move {
        match status::collect(&serf, &args.tags, args.query_timeout).await {
            Ok(rows) if json => super::remote::print_json(&status::rows_json(&rows)),
            Ok(rows) => {
                print!("{}", status::render(&rows));
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("cutover fleet-status: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

fn block_on(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(work),
        Err(err) => {
            eprintln!("cutover: could not start the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}
