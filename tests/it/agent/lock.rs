//! Two agents on one dest never interleave: the second waits for the first (saying so), or gives
//! up after `--lock-timeout` with the failure hooks.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::{read, Entry, Site};
use crate::support::wait_until;

/// A running agent whose stderr goes to a file; killed on drop if still running.
struct Running {
    child: Child,
    stderr: PathBuf,
}

impl Running {
    fn start(site: &Site, url: &str, name: &str, args: &[&str]) -> Running {
        let stderr = site.path(&format!("{name}.stderr"));
        let stdin = site.path(&format!("{name}.stdin"));
        std::fs::write(&stdin, url).expect("stdin file");
        let child = site
            .agent()
            .args(args)
            .stdin(File::open(&stdin).expect("stdin file"))
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn cutover");
        Running { child, stderr }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the agent says it waits for the lock another one holds.
    fn wait_for_lock(&self) {
        wait_until(
            "the second agent to wait for the lock",
            Duration::from_secs(60),
            || {
                self.stderr()
                    .contains("waiting for another cutover deploying to")
            },
        );
    }

    fn wait(mut self) -> Option<i32> {
        self.child.wait().expect("wait").code()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the pre hooks have written `order` (`start\n` once the first is in its hook).
fn wait_order(site: &Site, what: &str, order: &str) {
    wait_until(what, Duration::from_secs(60), || {
        std::fs::read_to_string(site.path("cwd/order")).is_ok_and(|s| s == order)
    });
}

/// Lets one blocked `read line < gate` hook through; waits (bounded) for a reader to be there.
fn open_gate(gate: &Path) {
    wait_until(
        "a hook reading the gate",
        Duration::from_secs(60),
        || match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(gate)
        {
            Ok(mut fifo) => fifo.write_all(b"go\n").is_ok(),
            Err(_) => false,
        },
    );
}

fn gated_site() -> (Site, String) {
    let site = Site::new();
    let gate = site.path("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let url = site.deploy_manifest(
        "commands:\n  pre:\n    - echo start >> order; read line < ../gate; echo end >> order\n  failure:\n    - touch failure-ran\n",
        &[Entry::File("index.html", b"x")],
    );
    (site, url)
}

#[test]
fn two_agents_on_one_dest_take_turns() {
    let (site, url) = gated_site();
    let order = site.path("cwd/order");
    let first = Running::start(&site, &url, "first", &[]);
    wait_order(&site, "the first agent's pre hook", "start\n");
    let second = Running::start(&site, &url, "second", &[]);
    second.wait_for_lock();
    assert!(
        second
            .stderr()
            .contains(&format!("(pid {})", first.child.id())),
        "{}",
        second.stderr()
    );
    open_gate(&site.path("gate"));
    // One reader at a time: a second "go" written while the first reader still holds the fifo
    // would be lost with it.
    wait_order(&site, "the second agent's pre hook", "start\nend\nstart\n");
    open_gate(&site.path("gate"));
    assert_eq!(first.wait(), Some(0));
    assert_eq!(second.wait(), Some(0));
    assert_eq!(
        read(&order),
        "start\nend\nstart\nend\n",
        "never interleaved"
    );
}

#[test]
fn the_lock_timeout_fails_the_waiting_agent_with_its_failure_hooks() {
    let (site, url) = gated_site();
    let first = Running::start(&site, &url, "first", &[]);
    wait_order(&site, "the first agent's pre hook", "start\n");
    let second = Running::start(&site, &url, "second", &["--lock-timeout=0.5s"]);
    let stderr = second.stderr.clone();
    assert_eq!(second.wait(), Some(1));
    let text = read(&stderr);
    assert!(text.contains("is still deploying to"), "{text}");
    assert!(site.path("cwd/failure-ran").exists());
    open_gate(&site.path("gate"));
    assert_eq!(first.wait(), Some(0));
}

#[test]
fn the_same_event_delivered_twice_at_once_deploys_once() {
    let (site, url) = gated_site();
    let events = super::input::consul_events(&url);
    let order = site.path("cwd/order");
    let first = Running::start(&site, &events, "first", &[]);
    wait_order(&site, "the first agent's pre hook", "start\n");
    let second = Running::start(&site, &events, "second", &[]);
    second.wait_for_lock();
    open_gate(&site.path("gate"));
    assert_eq!(first.wait(), Some(0));
    let stderr = second.stderr.clone();
    assert_eq!(second.wait(), Some(0));
    // The mark is written before the lock is released: the waiting agent sees it.
    assert!(
        read(&stderr).contains("already handled"),
        "{}",
        read(&stderr)
    );
    assert_eq!(read(&order), "start\nend\n");
}
