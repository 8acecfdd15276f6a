//! Test fleets: nodes made of one Serf agent (`serf`) plus one real supervisor (`supervisor`),
//! whole fleets joined into one encrypted cluster, and the release archives they deploy;
//! everything started here is stopped on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::Digest;

use super::http_server::HttpServer;
use super::serf::{keygen, AgentConfig, SerfAgent, GOSSIP};
use super::supervisor::Supervisor;
use super::{cutover, cutover_bin, fixture, free_port, wait_until};

/// One host of a test fleet: a supervisor, a Serf agent running `cutover serf-handler`, and
/// its own state dir, socket and app ports.
pub struct FleetNode {
    pub name: String,
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub supervisor: Option<Supervisor>,
    pub agent: Option<SerfAgent>,
    /// Environment the node's handler (and so its agent and apps' manifests) sees.
    pub env: Vec<(String, String)>,
    pub key: Option<String>,
}

impl FleetNode {
    /// Prepares a node in `root/NAME`; nothing runs until `start_supervisor`/`start_agent`.
    pub fn new(root: &Path, name: &str, key: Option<String>, env: Vec<(String, String)>) -> Self {
        let dir = root.join(name);
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let socket = dir.join("cutover.sock");
        let mut env = env;
        env.push(("CUTOVER_STATE_DIR".into(), state_dir.display().to_string()));
        env.push(("CUTOVER_SOCKET".into(), socket.display().to_string()));
        FleetNode {
            name: name.to_owned(),
            dir,
            state_dir,
            socket,
            supervisor: None,
            agent: None,
            env,
            key,
        }
    }

    /// Starts the node's supervisor (in its dir: `state/`, `cutover.sock`, `supervisor.log`)
    /// with the node's environment, and the caller's `RUST_LOG`; again, after a [`kill`], on
    /// the same state.
    ///
    /// [`kill`]: FleetNode::kill
    pub fn start_supervisor(&mut self) {
        let env = self.env.clone();
        let setup = |command: &mut Command| {
            command.envs(env);
            match std::env::var_os("RUST_LOG") {
                Some(level) => command.env("RUST_LOG", level),
                None => command.env_remove("RUST_LOG"),
            };
        };
        match &mut self.supervisor {
            Some(killed) => killed.restart_with(setup),
            None => self.supervisor = Some(Supervisor::start_with(&self.dir, setup)),
        }
    }

    pub fn start_agent(&mut self, join: Option<String>) {
        let handler = format!("{} serf-handler", cutover_bin().display());
        self.agent = Some(SerfAgent::start(&AgentConfig {
            name: self.name.clone(),
            encrypt: self.key.clone(),
            join,
            tags: vec![("role".into(), "web".into())],
            handler: Some(handler),
            env: self.env.clone(),
            log: self.dir.join("serf.log"),
        }));
    }

    pub fn agent(&self) -> &SerfAgent {
        self.agent.as_ref().expect("node's serf agent is running")
    }

    /// A host coming back after [`kill`]: its supervisor starts again on the same state (and
    /// adopts the instances that lived on), then its Serf agent joins the member at `join`.
    ///
    /// [`kill`]: FleetNode::kill
    pub fn rejoin(&mut self, join: String) {
        self.start_supervisor();
        self.start_agent(Some(join));
    }

    /// The node's live version of `app`, asked of its supervisor.
    pub fn live_version(&self, app: &str) -> Option<String> {
        self.supervisor.as_ref()?.live_version(app)
    }

    /// `cutover apply MANIFEST` on this node, directly (no Serf), with the node's environment.
    pub fn apply(&self, manifest: &Path) -> Output {
        cutover()
            .arg("apply")
            .arg(manifest)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run cutover apply")
    }

    /// The handler's fleet log (workers' lines and the agent's output).
    pub fn fleet_log(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("fleet/fleet.log")).unwrap_or_default()
    }

    /// Kills the host hard: SIGKILL to its Serf agent and its supervisor. The app instances live
    /// on in their own process groups, as they would on a real host, and a restarted supervisor
    /// adopts them again; the node's drop stops them either way.
    pub fn kill(&mut self) {
        if let Some(agent) = &mut self.agent {
            agent.kill();
        }
        self.agent = None;
        // Kept: dropping it would kill the instances it recorded.
        if let Some(supervisor) = &mut self.supervisor {
            supervisor.kill_9();
        }
    }
}

impl Drop for FleetNode {
    fn drop(&mut self) {
        if let Some(supervisor) = &self.supervisor {
            supervisor.stop_apps();
        }
        self.kill();
    }
}

/// A test fleet: N nodes joined into one encrypted Serf cluster, all stopped on drop.
pub struct Fleet {
    pub nodes: Vec<FleetNode>,
    pub root: tempfile::TempDir,
    pub key: String,
    /// Held for the fleet's life when it runs supervisors: several 3-5 node fleets at once would
    /// overload a 2-core CI machine and turn Serf's deadlines into noise. Dropped last.
    _serial: Option<std::sync::MutexGuard<'static, ()>>,
}

/// One fleet with supervisors at a time (see `Fleet::_serial`).
static FLEETS_WITH_SUPERVISORS: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Fleet {
    /// Starts `n` nodes (`n1`…); `supervisors: false` runs Serf agents and handlers only.
    /// `env(i)` adds environment for node i (1-based).
    pub fn start(
        n: usize,
        supervisors: bool,
        env: impl Fn(usize) -> Vec<(String, String)>,
    ) -> Fleet {
        let serial = supervisors.then(|| {
            FLEETS_WITH_SUPERVISORS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        });
        let root = tempfile::tempdir().unwrap();
        let key = keygen();
        let mut fleet = Fleet {
            nodes: Vec::new(),
            root,
            key,
            _serial: serial,
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
        let agent = self
            .nodes
            .iter()
            .find_map(|node| node.agent.as_ref())
            .unwrap();
        wait_until(&format!("{n} alive serf members"), GOSSIP, || {
            agent.alive_members().len() == n
        });
    }

    /// Every node's fleet log and supervisor log, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for node in &self.nodes {
            let sup = std::fs::read_to_string(node.dir.join("supervisor.log")).unwrap_or_default();
            all.push_str(&format!(
                "=== {} fleet.log\n{}",
                node.name,
                node.fleet_log()
            ));
            all.push_str(&format!("=== {} supervisor.log\n{sup}", node.name));
            let serf = std::fs::read_to_string(node.dir.join("serf.log")).unwrap_or_default();
            all.push_str(&format!("=== {} serf.log\n{serf}", node.name));
        }
        all
    }

    pub fn node(&self, name: &str) -> &FleetNode {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    pub fn node_mut(&mut self, name: &str) -> &mut FleetNode {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    /// Asserts that a rollout succeeded (exit 0), showing its output and every node's logs if not.
    pub fn assert_rolled_out(&self, out: &Output) {
        assert_eq!(out.status.code(), Some(0), "{}\n{}", text(out), self.logs());
    }

    /// `cutover status --fleet ARGS…` against node `via`'s Serf agent.
    pub fn status(&self, via: &str, args: &[&str]) -> Output {
        cutover()
            .args(["status", "--fleet"])
            .args(args)
            .args(["--rpc-addr", &self.node(via).agent().rpc])
            .output()
            .unwrap()
    }

    /// `cutover rollout ARGS…` against node `via`'s Serf agent, with test-sized deadlines.
    pub fn rollout(&self, via: &str, args: &[&str]) -> Output {
        cutover()
            .arg("rollout")
            .args(args)
            .args(["--rpc-addr", &self.node(via).agent().rpc])
            .args([
                "--timeout",
                "40s",
                "--unreachable-after",
                "6s",
                "--query-timeout",
                "3s",
            ])
            .output()
            .unwrap()
    }
}

/// Per node: where an app lives and which port its proxy owns, read by the manifest's template.
fn app_env(root: &Path, i: usize, app: &str) -> Vec<(String, String)> {
    vec![
        (
            format!("{app}_DEST"),
            root.join(format!("n{i}/srv/{app}")).display().to_string(),
        ),
        (
            format!("{app}_LISTEN"),
            format!("127.0.0.1:{}", free_port()),
        ),
    ]
}

/// What a release's app does.
pub enum Behaviour {
    /// Serves HTTP on its port.
    Serves,
    /// Serves, except on nodes where `<APP>_BROKEN` is set: there it never listens.
    BrokenWhereMarked,
    /// Serves, but on nodes where `<APP>_SLOW` is set it first waits that many milliseconds.
    SlowWhereMarked,
}

/// Writes a release archive and its manifest under `dir`; returns the manifest's path.
///
/// A node whose environment has `<APP>_SRC_<VERSION>` (e.g. `SHOP_SRC_2`) fetches that URL
/// instead of the archive: a way to break one release on one node only.
pub fn release(dir: &Path, app: &str, version: &str, behaviour: Behaviour) -> PathBuf {
    let archive = write_archive(dir, app, version);
    let src = format!("file://{}", archive.display());
    manifest(dir, app, version, behaviour, &src, &archive)
}

/// A release whose archive `server` serves (at `/<app>-<version>.tar.gz`), so that the test can
/// count its downloads; returns the manifest's path.
pub fn served_release(
    dir: &Path,
    app: &str,
    version: &str,
    server: &HttpServer,
) -> (PathBuf, String) {
    let archive = write_archive(dir, app, version);
    let path = format!("/{app}-{version}.tar.gz");
    server.serve(&path, std::fs::read(&archive).unwrap());
    let manifest = manifest(
        dir,
        app,
        version,
        Behaviour::Serves,
        &server.url(&path),
        &archive,
    );
    (manifest, path)
}

/// The release's archive: one `index.html` naming it.
fn write_archive(dir: &Path, app: &str, version: &str) -> PathBuf {
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
        tar.append_data(&mut header, "index.html", body.as_bytes())
            .unwrap();
        tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    }
    archive
}

/// The manifest of `archive` fetched from `src`, written beside it.
fn manifest(
    dir: &Path,
    app: &str,
    version: &str,
    behaviour: Behaviour,
    src: &str,
    archive: &Path,
) -> PathBuf {
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(archive).unwrap()));
    // The bundled demo app; `BROKEN` (from the node's environment) makes it never healthy,
    // `SLOW` makes it boot that many milliseconds late.
    let serve = format!("{} demo-app --port {{port}}", cutover_bin().display());
    let run = match behaviour {
        Behaviour::Serves => serve,
        Behaviour::BrokenWhereMarked => format!("{serve} ${{BROKEN:+--never-healthy}}"),
        Behaviour::SlowWhereMarked => format!("{serve} ${{SLOW:+--boot-delay $SLOW}}"),
    };
    let text = std::fs::read_to_string(fixture("fleet/app.yml.tmpl"))
        .unwrap()
        .replace("@SRC@", src)
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
