//! Fleet tests: real Serf agents on 127.0.0.1, each node with its own supervisor, state dir and
//! ports; `cutover rollout`, `serf-handler` and `fleet-status` run as the real binary.
//!
//! `plumbing` needs only Serf; `rollouts` needs the supervisor and the agent too.

mod plumbing;
mod rollouts;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use sha2::Digest;

use crate::support::serf::{keygen, FleetNode, GOSSIP};
use crate::support::{cutover, fixture, free_port, wait_until};

/// A test fleet: N nodes joined into one encrypted Serf cluster, all stopped on drop.
pub struct Fleet {
    pub nodes: Vec<FleetNode>,
    pub root: tempfile::TempDir,
    pub key: String,
}

impl Fleet {
    /// Starts `n` nodes (`n1`…); `supervisors: false` runs Serf agents and handlers only.
    /// `env(i)` adds environment for node i (1-based).
    pub fn start(n: usize, supervisors: bool, env: impl Fn(usize) -> Vec<(String, String)>) -> Fleet {
        let root = tempfile::tempdir().unwrap();
        let key = keygen();
        let mut fleet = Fleet {
            nodes: Vec::new(),
            root,
            key,
        };
        for i in 1..=n {
            let mut node_env = env(i);
            node_env.extend(app_env(fleet.root.path(), i, "SHOP"));
            node_env.extend(app_env(fleet.root.path(), i, "AUTH"));
            let mut node = FleetNode::new(
                fleet.root.path(),
                &format!("n{i}"),
                Some(fleet.key.clone()),
                node_env,
            );
            if supervisors {
                node.start_supervisor();
            }
            let join = fleet.nodes.first().map(|first| first.agent().bind.clone());
            node.start_agent(join);
            fleet.nodes.push(node);
        }
        fleet.wait_alive(n);
        fleet
    }

    /// Waits until the first live node sees exactly `n` alive members.
    pub fn wait_alive(&self, n: usize) {
        let agent = self.nodes.iter().find_map(|node| node.agent.as_ref()).unwrap();
        wait_until(&format!("{n} alive serf members"), GOSSIP, || {
            agent.alive_members().len() == n
        });
    }

    pub fn node(&self, name: &str) -> &FleetNode {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    pub fn node_mut(&mut self, name: &str) -> &mut FleetNode {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    /// `cutover rollout ARGS…` against node `via`'s Serf agent, with test-sized deadlines.
    pub fn rollout(&self, via: &str, args: &[&str]) -> Output {
        cutover()
            .arg("rollout")
            .args(args)
            .args(["--rpc-addr", &self.node(via).agent().rpc])
            .args(["--timeout", "40s", "--unreachable-after", "6s", "--query-timeout", "3s"])
            .output()
            .unwrap()
    }
}

/// Per node: where an app lives and which port its proxy owns, read by the manifest's template.
fn app_env(root: &Path, i: usize, app: &str) -> Vec<(String, String)> {
    vec![
        (format!("{app}_DEST"), root.join(format!("n{i}/srv/{app}")).display().to_string()),
        (format!("{app}_LISTEN"), format!("127.0.0.1:{}", free_port())),
    ]
}

/// What a release's app does.
pub enum Behaviour {
    /// Serves HTTP on its port.
    Serves,
    /// Serves, except on nodes where `<APP>_BROKEN` is set: there it never listens.
    BrokenWhereMarked,
}

/// Writes a release archive and its manifest under `dir`; returns the manifest's path.
pub fn release(dir: &Path, app: &str, version: &str, behaviour: Behaviour) -> PathBuf {
    let archive = dir.join(format!("{app}-{version}.tar.gz"));
    {
        let file = std::fs::File::create(&archive).unwrap();
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let body = format!("{app} {version}\n");
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "index.html", body.as_bytes()).unwrap();
        tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    }
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&archive).unwrap()));
    let serve = "exec python3 -m http.server {port} --bind 127.0.0.1";
    let run = match behaviour {
        Behaviour::Serves => format!("\"{serve}\""),
        Behaviour::BrokenWhereMarked => {
            format!("'if [ -n \"$BROKEN\" ]; then exec sleep 60; fi; {serve}'")
        }
    };
    let text = std::fs::read_to_string(fixture("fleet/app.yml.tmpl"))
        .unwrap()
        .replace("@ARCHIVE@", &archive.display().to_string())
        .replace("@SHA256@", &sha)
        .replace("@APP_ENV@", &app.to_ascii_uppercase())
        .replace("@APP@", app)
        .replace("@VERSION@", version)
        .replace("@RUN@", &run);
    let manifest = dir.join(format!("{app}-{version}.yml"));
    std::fs::write(&manifest, text).unwrap();
    manifest
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Deadline for a whole rollout in these tests: health gating plus generous coordination.
pub const ROLLOUT: Duration = Duration::from_secs(120);
