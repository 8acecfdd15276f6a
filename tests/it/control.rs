//! The control socket through the real binary: permissions, peer checks, stale and live sockets,
//! the handshake, frame limits, and the exit codes of the CLI verbs; `app_mode` drives a real
//! deploy through the agent.

mod app_mode;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::support::supervisor::{supervise, Supervisor};
use crate::support::{cutover, wait_until};

/// uid of `nobody`: a second user to connect as (the tests run as root).
const NOBODY: u32 = 65534;

/// Generous: the CI box is a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command exited with `code` and said `needle` on stderr.
#[track_caller]
fn assert_fails(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
    assert!(stderr(out).contains(needle), "{}", stderr(out));
}

/// Writes one frame: a u32 big-endian length and the bytes.
fn write_raw(stream: &mut UnixStream, body: &[u8]) {
    stream
        .write_all(&(body.len() as u32).to_be_bytes())
        .expect("write length");
    stream.write_all(body).expect("write body");
}

/// Reads one frame as JSON; `None` when the peer closed the connection.
fn read_raw(stream: &mut UnixStream) -> Option<serde_json::Value> {
    let mut len = [0u8; 4];
    if stream.read_exact(&mut len).is_err() {
        return None;
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).expect("read frame body");
    Some(serde_json::from_slice(&body).expect("frame is JSON"))
}

fn connect(sup: &Supervisor) -> UnixStream {
    let stream = UnixStream::connect(&sup.socket).expect("connect to the supervisor");
    // No test may hang on a supervisor that stays silent.
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

fn hello(stream: &mut UnixStream, protocol: u32) -> serde_json::Value {
    let hello = serde_json::json!({ "protocol": protocol, "client": "raw test client" });
    write_raw(stream, hello.to_string().as_bytes());
    read_raw(stream).expect("a handshake reply")
}

/// A child process killed if the test ends before it does.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` to its end within `DEADLINE`, killing it (and failing) if it runs longer.
fn output_within(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut child = Reaped(child);
    wait_until("the command to exit", DEADLINE, || {
        child.0.try_wait().expect("try_wait").is_some()
    });
    let mut out = Output {
        status: child.0.wait().expect("wait"),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    let _ = child.0.stdout.take().unwrap().read_to_end(&mut out.stdout);
    let _ = child.0.stderr.take().unwrap().read_to_end(&mut out.stderr);
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_socket_is_0600_in_a_0700_directory_it_creates() {
    let sup = Supervisor::start_at(|dir| dir.join("run/cutover/s.sock"));
    let socket = sup.socket.clone();
    assert_eq!(mode(&socket), 0o600, "socket mode");
    assert_eq!(mode(socket.parent().unwrap()), 0o700, "socket dir mode");
    // The socket accepts (into its backlog) from `listen` on; the line comes once it serves.
    wait_until("the supervisor to say it listens", DEADLINE, || {
        sup.log().contains("supervisor listening on")
    });
}

#[test]
fn another_user_is_refused_by_the_file_modes_and_by_the_peer_check() {
    let sup = Supervisor::start();
    let as_nobody = || {
        let mut cmd = sup.cli();
        cmd.arg("status").uid(NOBODY).gid(NOBODY);
        cmd
    };

    let out = output_within(as_nobody());
    assert_fails(&out, 1, "permission denied on the control socket");

    // Loosened by hand, the socket is still refused to anyone but its owner and root.
    std::fs::set_permissions(&sup.home, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sup.socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = output_within(as_nobody());
    // Exit 7, as the README promises for the uid check (1 is for a socket the modes keep out).
    assert_fails(
        &out,
        7,
        "refused this connection: uid 65534 may not use this supervisor",
    );
    assert!(sup
        .log()
        .contains("refused a control connection from uid 65534"));

    // root (the owner here) still gets in.
    let out = output_within({
        let mut cmd = sup.cli();
        cmd.args(["status", "--json"]);
        cmd
    });
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    // A socket file whose listener is gone: what a supervisor killed with -9 leaves behind.
    drop(UnixListener::bind(&stale).unwrap());
    assert!(UnixStream::connect(&stale).is_err());

    let sup = Supervisor::start_at(|_| stale.clone());
    assert!(
        sup.log().contains("replacing the stale control socket"),
        "{}",
        sup.log()
    );
    let out = sup.run(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_live_socket_is_never_stolen() {
    let sup = Supervisor::start();
    let other_state = tempfile::tempdir().unwrap();
    let out = output_within(supervise(other_state.path(), &sup.socket));
    assert_fails(
        &out,
        1,
        &format!(
            "another supervisor is already listening on {}",
            sup.socket.display()
        ),
    );
    // The first one still answers.
    let out = sup.run(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_protocol_mismatch_gets_a_refusal_and_a_closed_connection() {
    let sup = Supervisor::start();
    let mut stream = connect(&sup);
    let reply = hello(&mut stream, 999);
    assert_eq!(reply["accepted"], false, "{reply}");
    assert_eq!(reply["protocol"], 1, "{reply}");
    assert!(read_raw(&mut stream).is_none(), "the connection is closed");
}

#[test]
fn the_cli_explains_a_protocol_mismatch() {
    // A stand-in supervisor from the future that speaks protocol 2.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("future.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let _hello = read_raw(&mut stream);
        let reply =
            serde_json::json!({ "protocol": 2, "supervisor": "cutover 9.0.0", "accepted": false });
        write_raw(&mut stream, reply.to_string().as_bytes());
    });
    let mut cmd = cutover();
    cmd.arg("status").arg("--socket").arg(&socket);
    let out = output_within(cmd);
    server.join().unwrap();
    assert_fails(&out, 5, "protocol mismatch: this cutover speaks protocol 1");
    assert_fails(&out, 5, "speaks 2: run the same cutover version for both");
}

#[test]
fn an_oversize_request_is_refused_and_the_supervisor_carries_on() {
    let sup = Supervisor::start();
    let mut stream = connect(&sup);
    assert_eq!(hello(&mut stream, 1)["accepted"], true);
    // Announce a frame one byte over the 4 MiB limit; the body never needs to follow.
    stream
        .write_all(&((4 * 1024 * 1024 + 1) as u32).to_be_bytes())
        .unwrap();
    let answer = read_raw(&mut stream).expect("an error answer");
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["kind"], "bad_request", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("over the 4194304 byte limit"),
        "{answer}"
    );
    let out = sup.run(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_connection_that_never_says_hello_does_not_block_others() {
    let sup = Supervisor::start();
    let _silent = connect(&sup);
    let out = sup.run(&["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["apps"], serde_json::json!([]));
}

#[test]
fn status_of_an_unknown_app_exits_with_not_found() {
    let sup = Supervisor::start();
    let out = sup.run(&["status", "nosuchapp"]);
    assert_fails(&out, 3, "no app named nosuchapp");
    for verb in ["releases", "stop", "logs", "rollback"] {
        let out = sup.run(&[verb, "nosuchapp"]);
        assert_eq!(out.status.code(), Some(3), "{verb}: {}", stderr(&out));
    }
}

#[test]
fn without_a_supervisor_the_cli_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    for socket in [&missing, &stale] {
        let mut cmd = cutover();
        cmd.arg("status").arg("--socket").arg(socket);
        let out = output_within(cmd);
        let expected = format!(
            "no supervisor listening on {}: start it with `cutover supervise`",
            socket.display()
        );
        assert_fails(&out, 1, &expected);
    }
}

#[test]
fn a_clean_stop_removes_the_socket_file() {
    let mut sup = Supervisor::start();
    let socket = sup.socket.clone();
    let pid = nix::unistd::Pid::from_raw(sup.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_until("the socket file to go", DEADLINE, || !socket.exists());
    // The same state dir starts again.
    sup.restart();
    assert!(sup.run(&["status"]).status.success());
}
