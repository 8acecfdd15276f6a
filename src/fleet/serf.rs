//! The local Serf agent, reached through the `serf` CLI (`-rpc-addr`, `-rpc-auth`, `-format=json`).
//!
//! The CLI is what operators already have and debug with, and its JSON output is stable across
//! Serf 0.7–0.8; cutover adds no gossip of its own. Every call has a deadline: a Serf agent that
//! hangs must never hang a rollout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use super::query_size;

/// How long a plain RPC (members, tags, event) may take before it counts as failed.
const RPC_DEADLINE: Duration = Duration::from_secs(10);

/// Slack added to a query's own timeout: serf itself returns when the query times out.
const QUERY_SLACK: Duration = Duration::from_secs(5);
/// How long `gather` lets a query go unanswered before it sends the same query again beside it.
const RESEND: Duration = Duration::from_millis(600);
/// Queries `gather` (and a rollout's status polling) keep open at once.
pub const QUERIES_IN_FLIGHT: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum SerfError {
    #[error(
        "could not run `{bin}`: {source}; install Serf (Debian package `serf`) or pass --serf-bin"
    )]
    Spawn { bin: String, source: std::io::Error },
    #[error("`serf {verb}` did not answer within {deadline:?}: is the Serf agent at {rpc} alive?")]
    Timeout {
        verb: String,
        rpc: String,
        deadline: Duration,
    },
    #[error("`serf {verb}` failed against {rpc}: {message}")]
    Failed {
        verb: String,
        rpc: String,
        message: String,
    },
    #[error("`serf {verb}` printed JSON cutover cannot read: {source}")]
    Json {
        verb: String,
        source: serde_json::Error,
    },
}

/// One cluster member as `serf members -format=json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    pub name: String,
    pub addr: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// `alive`, `leaving`, `left` or `failed`.
    pub status: String,
}

impl Member {
    pub fn is_alive(&self) -> bool {
        self.status == "alive"
    }
}

#[derive(Debug, Deserialize)]
struct MembersOut {
    members: Vec<Member>,
}

/// What a query collected before its timeout: who acknowledged, and each responder's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub acks: Vec<String>,
    pub responses: BTreeMap<String, String>,
    /// Whether serf said it dispatched the query (a refused RPC never does).
    dispatched: bool,
}

impl QueryResult {
    /// Takes in one line of `serf query`'s text output.
    fn absorb(&mut self, line: &str) {
        if line.starts_with("Query '") && line.ends_with("dispatched") {
            self.dispatched = true;
        } else if let Some(rest) = line.strip_prefix("Ack from '") {
            if let Some(node) = rest.strip_suffix('\'') {
                self.acks.push(node.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("Response from '") {
            if let Some((node, payload)) = rest.split_once("': ") {
                self.responses
                    .insert(node.to_owned(), payload.trim().to_owned());
            }
        }
    }
}

/// How to reach the local Serf agent. `None` fields fall back to the CLI's own defaults, which
/// also honour `SERF_RPC_ADDR` and `SERF_RPC_AUTH` (so handlers inherit the agent's settings).
#[derive(Clone)]
pub struct Serf {
    pub bin: PathBuf,
    pub rpc_addr: Option<String>,
    rpc_auth: Option<String>,
}

// The RPC token is a secret: it never appears in Debug output.
impl std::fmt::Debug for Serf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serf")
            .field("bin", &self.bin)
            .field("rpc_addr", &self.rpc_addr)
            .field("rpc_auth", &self.rpc_auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Serf {
    pub fn new(bin: PathBuf, rpc_addr: Option<String>, rpc_auth: Option<String>) -> Serf {
        Serf {
            bin,
            rpc_addr,
            rpc_auth,
        }
    }

    /// The agent settings from the environment alone, as a handler run by `serf agent` sees them.
    pub fn from_env() -> Serf {
        let bin = std::env::var_os("CUTOVER_SERF_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("serf"));
        Serf::new(bin, None, None)
    }

    fn rpc(&self) -> String {
        self.rpc_addr
            .clone()
            .or_else(|| std::env::var("SERF_RPC_ADDR").ok())
            .unwrap_or_else(|| "127.0.0.1:7373".to_owned())
    }

    /// Members (any status) whose tags match every `key=regexp` filter (Serf anchors them).
    pub async fn members(&self, tag_filters: &[String]) -> Result<Vec<Member>, SerfError> {
        let mut args = vec!["-format=json".to_owned()];
        for filter in tag_filters {
            args.push("-tag".to_owned());
            args.push(filter.clone());
        }
        let out = self.run("members", &args, RPC_DEADLINE).await?;
        let parsed: MembersOut = serde_json::from_str(&out).map_err(|source| SerfError::Json {
            verb: "members".to_owned(),
            source,
        })?;
        Ok(parsed.members)
    }

    /// Sends query `name` to `nodes` (all members when empty) and gathers answers until `timeout`,
    /// or until every named node has answered.
    ///
    /// `serf query -format=json` always waits out the whole timeout, which would add seconds to
    /// every step of a rollout; the text format streams each ack and response as it arrives, so
    /// cutover reads that and stops as soon as the last expected answer is in.
    ///
    /// Names that do not fit in one query beside the payload (`query_size`) go out as several
    /// queries at once, whose answers are put together; the first failure fails the whole.
    pub async fn query(
        &self,
        name: &str,
        payload: &str,
        nodes: &[String],
        timeout: Duration,
    ) -> Result<QueryResult, SerfError> {
        let groups = query_size::groups(name, payload, nodes);
        let asked = groups
            .iter()
            .map(|g| self.query_group(name, payload, g, timeout));
        let mut whole = QueryResult::default();
        for result in futures_util::future::join_all(asked).await {
            let part = result?;
            whole.acks.extend(part.acks);
            whole.responses.extend(part.responses);
            whole.dispatched |= part.dispatched;
        }
        Ok(whole)
    }

    /// One `serf query` for `nodes`, whose names fit in it.
    async fn query_group(
        &self,
        name: &str,
        payload: &str,
        nodes: &[String],
        timeout: Duration,
    ) -> Result<QueryResult, SerfError> {
        // A relayed copy of each answer survives the loss of one UDP packet on a busy host.
        let mut args = vec![
            format!("-timeout={}ms", timeout.as_millis().max(1)),
            "-relay-factor=1".to_owned(),
        ];
        for node in nodes {
            args.push(format!("-node={node}"));
        }
        args.push(name.to_owned());
        args.push(payload.to_owned());
        let mut child =
            self.command("query", &args)
                .spawn()
                .map_err(|source| SerfError::Spawn {
                    bin: self.bin.display().to_string(),
                    source,
                })?;
        let stdout = child.stdout.take().ok_or_else(|| SerfError::Failed {
            verb: "query".to_owned(),
            rpc: self.rpc(),
            message: "no stdout pipe".to_owned(),
        })?;
        let mut lines = BufReader::new(stdout).lines();
        let mut result = QueryResult::default();
        let collect = async {
            while let Some(line) = lines.next_line().await? {
                result.absorb(&line);
                if !nodes.is_empty() && nodes.iter().all(|n| result.responses.contains_key(n)) {
                    break;
                }
            }
            Ok::<(), std::io::Error>(())
        };
        match tokio::time::timeout(timeout + QUERY_SLACK, collect).await {
            Err(_) => {
                return Err(SerfError::Timeout {
                    verb: "query".to_owned(),
                    rpc: self.rpc(),
                    deadline: timeout + QUERY_SLACK,
                })
            }
            Ok(Err(source)) => {
                return Err(SerfError::Spawn {
                    bin: self.bin.display().to_string(),
                    source,
                })
            }
            Ok(Ok(())) => {}
        }
        // Either every answer is in (the query may still be open: end it) or serf has exited.
        let _ = child.start_kill();
        let status = child.wait().await.ok();
        let dispatched = result.dispatched;
        if !dispatched && status.is_some_and(|s| !s.success()) {
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut stderr).await;
            }
            return Err(SerfError::Failed {
                verb: "query".to_owned(),
                rpc: self.rpc(),
                message: first_line(&stderr),
            });
        }
        Ok(result)
    }

    /// Sends query `name` to `nodes` and gathers their answers until each has answered or
    /// `patience` has passed; also returns the first failure of a query, if any.
    ///
    /// While answers are missing, a new copy goes out every `RESEND` (up to `QUERIES_IN_FLIGHT`
    /// open at once): Serf spreads a query by gossip, and on a small or busy cluster a copy now
    /// and then never reaches its node; waiting out a whole query timeout for it would stall
    /// whoever asked. A query that starts work must therefore be idempotent (cutover's deploy
    /// and rollback queries carry a run id for that, see `wire::with_run`).
    pub async fn gather(
        &self,
        name: &str,
        payload: &str,
        nodes: &[String],
        query_timeout: Duration,
        patience: Duration,
    ) -> (BTreeMap<String, String>, Option<SerfError>) {
        let deadline = tokio::time::Instant::now() + patience;
        let mut answers = BTreeMap::new();
        let mut failure = None;
        let mut queries = tokio::task::JoinSet::new();
        let mut resend = tokio::time::interval(RESEND);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let missing: Vec<String> = nodes
                .iter()
                .filter(|n| !answers.contains_key(*n))
                .cloned()
                .collect();
            if missing.is_empty() {
                break;
            }
            tokio::select! {
                _ = resend.tick(), if queries.len() < QUERIES_IN_FLIGHT => {
                    let (serf, name, payload) = (self.clone(), name.to_owned(), payload.to_owned());
                    let timeout = query_timeout.min(patience);
                    queries.spawn(async move { serf.query(&name, &payload, &missing, timeout).await });
                }
                Some(done) = queries.join_next() => match done {
                    Ok(Ok(result)) => answers.extend(
                        result.responses.into_iter().filter(|(node, _)| nodes.contains(node)),
                    ),
                    Ok(Err(err)) => {
                        failure.get_or_insert(err);
                    }
                    Err(err) => {
                        failure.get_or_insert(SerfError::Failed {
                            verb: "query".to_owned(),
                            rpc: self.rpc(),
                            message: err.to_string(),
                        });
                    }
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        (answers, failure)
    }

    /// Fires user event `name` at the whole cluster; `coalesce: false` keeps every event (Serf's
    /// default coalescing delivers only the last of a burst with the same name).
    pub async fn event(&self, name: &str, payload: &str, coalesce: bool) -> Result<(), SerfError> {
        let args = vec![
            format!("-coalesce={coalesce}"),
            name.to_owned(),
            payload.to_owned(),
        ];
        self.run("event", &args, RPC_DEADLINE).await.map(drop)
    }

    /// Sets (or replaces) tags on the local member; Serf gossips them to every peer.
    pub async fn set_tags(&self, tags: &[(String, String)]) -> Result<(), SerfError> {
        if tags.is_empty() {
            return Ok(());
        }
        let mut args = Vec::new();
        for (key, value) in tags {
            args.push("-set".to_owned());
            args.push(format!("{key}={value}"));
        }
        self.run("tags", &args, RPC_DEADLINE).await.map(drop)
    }

    /// Runs `serf VERB [rpc flags] ARGS…` and returns its stdout, within `deadline`.
    async fn run(
        &self,
        verb: &str,
        args: &[String],
        deadline: Duration,
    ) -> Result<String, SerfError> {
        let child = self
            .command(verb, args)
            .spawn()
            .map_err(|source| SerfError::Spawn {
                bin: self.bin.display().to_string(),
                source,
            })?;
        let output = tokio::time::timeout(deadline, child.wait_with_output())
            .await
            .map_err(|_| SerfError::Timeout {
                verb: verb.to_owned(),
                rpc: self.rpc(),
                deadline,
            })?
            .map_err(|source| SerfError::Spawn {
                bin: self.bin.display().to_string(),
                source,
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            let message = first_line(if stderr.trim().is_empty() {
                &stdout
            } else {
                &stderr
            });
            return Err(SerfError::Failed {
                verb: verb.to_owned(),
                rpc: self.rpc(),
                message,
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Serf {
    fn command(&self, verb: &str, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(verb);
        if let Some(addr) = &self.rpc_addr {
            cmd.arg(format!("-rpc-addr={addr}"));
        }
        if let Some(auth) = &self.rpc_auth {
            cmd.arg(format!("-rpc-auth={auth}"));
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A timed-out call must not leave a `serf` process behind.
            .kill_on_drop(true);
        cmd
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no output")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_text_output_is_read_line_by_line() {
        let mut result = QueryResult::default();
        for line in [
            "Query 'cutover-status' dispatched",
            "Ack from 'n1'",
            "Response from 'n1': {\"ok\":1,\"m\":\"a': b\"}",
            "",
            "Total Acks: 1",
        ] {
            result.absorb(line);
        }
        assert!(result.dispatched);
        assert_eq!(result.acks, ["n1"]);
        assert_eq!(result.responses["n1"], "{\"ok\":1,\"m\":\"a': b\"}");
    }

    #[test]
    fn members_output_parses() {
        let out = r#"{"members":[{"name":"n1","addr":"127.0.0.1:7946","port":7946,
            "tags":{"role":"web","cutover.shop":"1.2"},"status":"alive",
            "protocol":{"max":5,"min":2,"version":5}}]}"#;
        let parsed: MembersOut = serde_json::from_str(out).unwrap();
        assert_eq!(parsed.members[0].tags["cutover.shop"], "1.2");
        assert!(parsed.members[0].is_alive());
    }
}
