//! Real Serf agents on 127.0.0.1, each with its own ports, key and handler environment, stopped
//! on drop; `fleet` makes test fleets of them.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

/// Generous: gossip on a loaded 2-core box can take a few seconds to converge.
pub const GOSSIP: Duration = Duration::from_secs(30);

/// A fresh Serf encryption key (`serf keygen`).
pub fn keygen() -> String {
    let out = Command::new("serf")
        .arg("keygen")
        .output()
        .expect("run serf keygen");
    assert!(out.status.success(), "serf keygen failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// How one agent is started.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    pub name: String,
    pub encrypt: Option<String>,
    /// `127.0.0.1:PORT` of a member to join at start.
    pub join: Option<String>,
    pub tags: Vec<(String, String)>,
    /// `-event-handler` value; `None`: no handler.
    pub handler: Option<String>,
    /// Extra environment for the agent (and so for every handler it runs).
    pub env: Vec<(String, String)>,
    /// Where the agent's log goes.
    pub log: PathBuf,
}

/// One `serf agent` child process, killed on drop.
pub struct SerfAgent {
    pub name: String,
    pub bind: String,
    pub rpc: String,
    child: Option<Child>,
    log: PathBuf,
}

impl SerfAgent {
    pub fn start(cfg: &AgentConfig) -> SerfAgent {
        let bind = format!("127.0.0.1:{}", free_udp_tcp_port());
        let rpc = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(&cfg.log).expect("create serf log");
        let mut cmd = Command::new("serf");
        cmd.arg("agent")
            .arg(format!("-node={}", cfg.name))
            .arg(format!("-bind={bind}"))
            .arg(format!("-rpc-addr={rpc}"))
            // Loopback timings: failures are detected in about a second instead of several.
            .arg("-profile=local")
            .env("SERF_RPC_ADDR", &rpc)
            .envs(cfg.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for var in ["CUTOVER_STATE_DIR", "CUTOVER_SOCKET"] {
            if !cfg.env.iter().any(|(k, _)| k == var) {
                cmd.env_remove(var);
            }
        }
        if let Some(key) = &cfg.encrypt {
            cmd.arg(format!("-encrypt={key}"));
        }
        if let Some(join) = &cfg.join {
            cmd.arg(format!("-join={join}"));
        }
        for (k, v) in &cfg.tags {
            cmd.arg("-tag").arg(format!("{k}={v}"));
        }
        if let Some(handler) = &cfg.handler {
            cmd.arg(format!("-event-handler={handler}"));
        }
        let child = cmd.spawn().expect("start serf agent (is serf installed?)");
        let mut agent = SerfAgent {
            name: cfg.name.clone(),
            bind,
            rpc,
            child: Some(child),
            log: cfg.log.clone(),
        };
        wait_until(&format!("serf agent {} RPC", agent.name), GOSSIP, || {
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "serf agent {} exited with {status}:\n{}",
                    agent.name,
                    agent.log_text()
                );
            }
            agent.cli(&["members"]).status.success()
        });
        agent
    }

    /// Runs `serf VERB -rpc-addr=… ARGS…` against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("serf");
        cmd.arg(args[0]).arg(format!("-rpc-addr={}", self.rpc));
        cmd.args(&args[1..]).stdin(Stdio::null());
        cmd.output().expect("run serf")
    }

    /// Names of the members this agent sees alive.
    pub fn alive_members(&self) -> Vec<String> {
        let out = self.cli(&["members", "-status=alive", "-format=json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut names: Vec<String> = json["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| m["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// This agent's tags as the cluster sees them from `from`.
    pub fn tags_seen_by(&self, from: &SerfAgent) -> serde_json::Value {
        let out = from.cli(&["members", "-format=json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        json["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == self.name.as_str()))
            .map(|m| m["tags"].clone())
            .unwrap_or_default()
    }

    /// Pid of the agent process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crashed host: no leave message, peers must detect the failure.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SerfAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Serf binds its gossip port on TCP and UDP: pick one free on both.
fn free_udp_tcp_port() -> u16 {
    loop {
        let port = free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
