//! What the benchmarks share: free ports, waiting with a deadline, child processes, numbers from
//! the environment, requests to a supervisor, nginx as the baseline reverse proxy, and wrk's
//! figures and their median. Included by each bench with `mod common;`; not every bench uses
//! every piece.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cutover::protocol::client::Client;

#[path = "../it/support/ports.rs"]
mod ports;
#[path = "../it/support/procs.rs"]
mod procs;
use cutover::protocol::{Request, Response, StopRequest};
pub use ports::free_port;
pub use procs::children;

/// The longest any wait of a benchmark may take.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// One request to the supervisor listening on `socket`; its final answer.
pub async fn request(socket: &Path, request: Request) -> Response {
    let client = Client::connect(socket).await.expect("connect");
    client.request(&request, |_| {}).await.expect("request")
}

/// Stops the app `name` (a benchmark does not care for the answer).
pub async fn stop_app(socket: &Path, name: &str) {
    let stop = Request::Stop(StopRequest {
        app: name.to_owned(),
    });
    let _ = request(socket, stop).await;
}

pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn has(program: &str, version_flag: &str) -> bool {
    Command::new(program)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

pub fn terminate(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// Debian's nginx as a reverse proxy (2 workers, upstream keep-alive 64, HTTP/1.1 to the
/// backends, access log off) in front of `backends`; stopped on drop.
pub struct Nginx {
    dir: PathBuf,
    conf: PathBuf,
    pub listen: SocketAddr,
    child: Child,
}

impl Nginx {
    /// `headers`: with the header work cutover's proxy does on every request
    /// (`X-Forwarded-For/-Proto/-Host`, the client's `Host`, an `X-Request-Id` both ways).
    pub fn start(dir: &Path, backends: &[String], headers: bool) -> Nginx {
        Nginx::start_with(dir, backends, headers, None)
    }

    /// Like `start` with the header work, but serving HTTPS (and HTTP/2 by ALPN) with `tls`.
    pub fn start_tls(dir: &Path, backends: &[String], tls: &NginxTls) -> Nginx {
        Nginx::start_with(dir, backends, true, Some(tls))
    }

    fn start_with(dir: &Path, backends: &[String], headers: bool, tls: Option<&NginxTls>) -> Nginx {
        std::fs::create_dir_all(dir).expect("nginx dir");
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let prefix = dir.display();
        let servers: String = backends.iter().map(|b| format!("server {b}; ")).collect();
        let headers = if headers {
            "proxy_set_header Host $host;\n      \
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      \
             proxy_set_header X-Forwarded-Proto $scheme;\n      \
             proxy_set_header X-Forwarded-Host $host;\n      \
             proxy_set_header X-Request-Id $request_id;\n      \
             add_header X-Request-Id $request_id;\n"
        } else {
            ""
        };
        let (listen_line, tls_lines) = match tls {
            None => (format!("listen {listen};"), String::new()),
            Some(tls) => tls.server_lines(listen),
        };
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\npid {prefix}/nginx.pid;\n\
             error_log {prefix}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n  \
             proxy_temp_path {prefix}/proxy;\n  fastcgi_temp_path {prefix}/fastcgi;\n  \
             uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n  \
             upstream backend {{ {servers}keepalive 64; }}\n  \
             server {{\n    {listen_line}\n{tls_lines}    location / {{\n      proxy_pass http://backend;\n      \
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      \
             {headers}    }}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .expect("start nginx (Debian package `nginx-light`)");
        let nginx = Nginx {
            dir: dir.to_owned(),
            conf: path,
            listen,
            child,
        };
        wait_for("nginx to listen", || {
            std::net::TcpStream::connect(listen).is_ok() && nginx.workers().len() == 2
        });
        nginx
    }

    pub fn workers(&self) -> Vec<u32> {
        children(self.child.id())
            .into_iter()
            .map(|(pid, _)| pid)
            .collect()
    }

    /// `nginx -s reload`, complete when the old workers are gone and two new ones run.
    pub fn reload(&mut self) {
        let old = self.workers();
        let status = Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(&self.conf)
            .args(["-s", "reload"])
            .status()
            .expect("run nginx -s reload");
        assert!(status.success(), "nginx -s reload failed");
        wait_for("nginx's old workers to exit", || {
            let now = self.workers();
            !now.iter().any(|pid| old.contains(pid)) && now.len() == 2
        });
    }
}

/// What nginx needs to serve HTTPS: the certificate chain and key (PEM), and the one TLS 1.3
/// cipher suite it may use (OpenSSL's name, e.g. `TLS_AES_128_GCM_SHA256`). TLS 1.3 only, HTTP/2
/// offered by ALPN (`http2 on;` from nginx 1.25.1, `listen … ssl http2` before), and
/// `keepalive_requests` raised so that neither wrk's nor h2load's connections are closed after
/// nginx's default of 1,000 requests (cutover sets no such limit).
pub struct NginxTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ciphersuite: &'a str,
}

impl NginxTls<'_> {
    fn server_lines(&self, listen: SocketAddr) -> (String, String) {
        let listen_line = if nginx_version() >= (1, 25, 1) {
            format!("listen {listen} ssl;\n    http2 on;")
        } else {
            format!("listen {listen} ssl http2;")
        };
        let lines = format!(
            "    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.3;\n    \
             ssl_conf_command Ciphersuites {};\n    keepalive_requests 1000000;\n",
            self.cert.display(),
            self.key.display(),
            self.ciphersuite
        );
        (listen_line, lines)
    }
}

/// The installed nginx's version (`nginx -v`), `(0, 0, 0)` when it cannot be told.
pub fn nginx_version() -> (u32, u32, u32) {
    let output = Command::new("nginx").arg("-v").output();
    let text = output
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    let mut parts = text
        .split("nginx/")
        .nth(1)
        .unwrap_or("")
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

impl Drop for Nginx {
    fn drop(&mut self) {
        terminate(self.child.id());
        let _ = self.child.wait();
    }
}

/// The release `cutover demo-app` on a free port of 127.0.0.1, answering as `label`, once it
/// accepts connections; stopped when the guard drops.
pub fn demo_backend(label: &str) -> (SocketAddr, Guard) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args([
            "demo-app",
            "--port",
            &addr.port().to_string(),
            "--version-label",
            label,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cutover demo-app");
    let guard = Guard(child);
    wait_for("demo-app", || TcpStream::connect(addr).is_ok());
    (addr, guard)
}

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One run's figures: a rate (requests/s or handshakes/s), latencies when the tool gives them,
/// and what failed.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: String,
}

/// `wrk -t2 -c50 -dSECS --latency URL`: its requests/s, p50 and p99, and what failed.
pub fn wrk(url: &str, secs: u64) -> Figures {
    let output = Command::new("wrk")
        .args(["-t2", "-c50", &format!("-d{secs}s"), "--latency"])
        .arg(url)
        .output()
        .expect("run wrk (Debian package `wrk`)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.split_whitespace().nth(1))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no `{prefix}` in wrk output:\n{text}"))
    };
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    Figures {
        rate: field("Requests/sec:").parse().unwrap_or(0.0),
        p50_ms: to_ms(&field("50%")),
        p99_ms: to_ms(&field("99%")),
        errors,
    }
}

/// wrk prints latencies as `812.00us`, `1.23ms` or `1.01s`.
pub fn to_ms(value: &str) -> f64 {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        _ => f64::NAN,
    }
}

/// The middle value (the mean of the two middle ones for an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}
