//! Benchmark: the proxy's front door over TLS and HTTP/2, cutover vs nginx with the same
//! certificate and cipher (TLS keep-alive requests/s and p99, new handshakes/s, HTTP/2 requests/s).
//!
//! `cargo bench --bench front` makes a test CA and a leaf certificate for `localhost` and
//! `127.0.0.1` (ECDSA P-256, PEM, PKCS#8 key) with the `openssl` CLI in the bench's temp dir,
//! starts one backend (the release `cutover demo-app`), and serves it over HTTPS from:
//! - `cutover`: cutover's proxy in this process (`Proxy::bind_held` from a 2-thread tokio
//!   runtime, the route set, then `set_tls` with the certificate's files, then
//!   `start_accepting`), which offers HTTP/2 by ALPN;
//! - `nginx`: Debian's nginx with the same certificate, 2 workers, TLS 1.3 only, HTTP/2, upstream
//!   keepalive 64, HTTP/1.1 to the backend, access log off, the forwarding headers cutover sets
//!   (`X-Forwarded-For/-Proto/-Host`, `X-Request-Id`), and `keepalive_requests` raised so it
//!   does not close the clients' connections every 1,000 requests.
//!
//! Both use one TLS 1.3 cipher suite: the bench asks cutover which one it negotiates with
//! OpenSSL's default client offer (`openssl s_client`), pins nginx to it (`ssl_conf_command
//! Ciphersuites`), checks nginx's with `openssl s_client` too, and prints both.
//!
//! It measures, for each:
//! 1. `tls`: keep-alive requests/s and p99 with `wrk -t2 -c50 --latency https://…` (target:
//!    cutover ≥ 1.0x nginx's requests/s, p99 ≤ nginx's);
//! 2. `handshakes`: new TLS handshakes per second with a client of its own (a 2-thread tokio
//!    runtime, `HANDSHAKE_CONNS` loops, 32 by default, each: connect, a full TLS 1.3 handshake
//!    with no session resumption, restricted to the same cipher suite and X25519, trusting the
//!    test CA, one `GET /` with `Connection: close`, the answer read to its end, close) (target:
//!    ≥ 0.9x nginx's);
//! 3. `h2`: HTTP/2 requests/s over TLS (ALPN h2) with `h2load -c10 -m10 -t2 -D SECS` (target:
//!    ≥ 1.0x nginx's).
//!
//! The machine is shared and noisy, so the contenders run in alternating rounds (`BENCH_ROUNDS`,
//! 3 by default; in each round, each measurement starts with the next contender), every run is
//! printed, and the verdict compares the medians. `BENCH_SECS` sets each run's length (10 s by
//! default). A missing tool (`wrk`, `h2load`, `nginx`) makes the bench say so and skip what
//! needs it; without `openssl` there is no certificate and nothing is measured. Everything stays
//! on 127.0.0.1, on free ports, and is stopped when the bench ends.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{demo_backend, env_number, has, median, wait_for, wrk, Figures, Nginx, NginxTls};
use cutover::protocol::app::{Balance, TlsSpec};
use cutover::supervisor::proxy::{Backend, Proxy, Route};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// The three measurements, each run against every contender.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    Tls,
    Handshakes,
    H2,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Tls => "tls",
            Part::Handshakes => "handshakes",
            Part::H2 => "h2",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Part::Handshakes => "handshakes/s",
            _ => "req/s",
        }
    }
}

/// `h2load -c10 -m10 -t2 -D SECS` over TLS (ALPN h2): its requests/s, and any request that did
/// not succeed or a protocol other than h2.
fn h2load(addr: SocketAddr, secs: u64) -> Figures {
    let output = Command::new("h2load")
        .args(["-c10", "-m10", "-t2", "-D", &secs.to_string()])
        .arg(format!("https://{addr}/"))
        .output()
        .expect("run h2load (Debian package `nghttp2-client`)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    // `finished in 10.00s, 12345.60 req/s, 1.23MB/s`
    let rate = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.trim_end_matches(" req/s").parse().ok())
        .unwrap_or_else(|| panic!("no `finished in` in h2load output:\n{text}"));
    // `requests: 123 total, 123 started, 123 done, 123 succeeded, 0 failed, 0 errored, 0 timeout`
    let mut errors = Vec::new();
    if let Some(line) = text.lines().find(|l| l.starts_with("requests:")) {
        for part in line.split(", ") {
            let mut words = part.split_whitespace();
            let n: u64 = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            if n > 0 && matches!(words.next(), Some("failed" | "errored" | "timeout")) {
                errors.push(part.to_owned());
            }
        }
    }
    if let Some(line) = text.lines().find(|l| l.starts_with("status codes:")) {
        if line.split(", ").skip(1).any(|p| !p.starts_with("0 ")) {
            errors.push(line.to_owned());
        }
    }
    match text
        .lines()
        .find(|l| l.starts_with("Application protocol:"))
    {
        Some(line) if line.ends_with(" h2") => {}
        other => errors.push(format!("not h2: {other:?}")),
    }
    Figures {
        rate,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: errors.join("; "),
    }
}

/// The bench's own TLS client: TLS 1.3 only, the one `suite` (rustls's name, e.g.
/// `TLS13_AES_256_GCM_SHA384`), X25519, no session resumption, ALPN `http/1.1`, trusting `ca`.
fn handshake_client(ca: &Path, suite: &str) -> TlsConnector {
    let default = rustls::crypto::aws_lc_rs::default_provider();
    let cipher = default
        .cipher_suites
        .iter()
        .find(|s| format!("{:?}", s.suite()) == suite)
        .copied()
        .unwrap_or_else(|| panic!("rustls has no cipher suite {suite}"));
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![cipher],
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        ..default
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the test CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("trust the test CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with that suite")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// One new connection: connect, full handshake, `GET /` with `Connection: close`, the answer read
/// to its end. Returns what was negotiated (suite, key exchange group).
async fn one_handshake(addr: SocketAddr, connector: &TlsConnector) -> std::io::Result<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("a server name");
    let mut tls = connector.connect(name, tcp).await?;
    let negotiated = {
        let (_, conn) = tls.get_ref();
        format!(
            "{:?}, {:?}",
            conn.negotiated_cipher_suite().map(|s| s.suite()),
            conn.negotiated_key_exchange_group().map(|g| g.name())
        )
    };
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::with_capacity(1024);
    match tls.read_to_end(&mut answer).await {
        Ok(_) => {}
        // A server closing without close_notify after a whole answer: the answer still counts.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(e),
    }
    if !answer.starts_with(b"HTTP/1.1 200") {
        let head = String::from_utf8_lossy(&answer[..answer.len().min(40)]).into_owned();
        return Err(std::io::Error::other(format!("answer {head:?}")));
    }
    Ok(negotiated)
}

/// Completed handshakes (each with its answer) per second over `secs`, from `conns` loops on a
/// 2-thread runtime of the bench's own.
fn handshakes(addr: SocketAddr, secs: u64, conns: usize, connector: &TlsConnector) -> Figures {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    runtime.block_on(async {
        let loops: Vec<_> = (0..conns)
            .map(|_| {
                let (connector, done, failed, first_error) = (
                    connector.clone(),
                    done.clone(),
                    failed.clone(),
                    first_error.clone(),
                );
                tokio::spawn(async move {
                    while Instant::now() < end {
                        match one_handshake(addr, &connector).await {
                            Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                first_error
                                    .lock()
                                    .unwrap()
                                    .get_or_insert_with(|| e.to_string());
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        for l in loops {
            l.await.expect("a handshake loop");
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    Figures {
        rate: done.load(Ordering::Relaxed) as f64 / elapsed,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: if failed == 0 {
            String::new()
        } else {
            format!(
                "{failed} failed (first: {})",
                first_error.lock().unwrap().clone().unwrap_or_default()
            )
        },
    }
}

/// What `openssl s_client` (OpenSSL's default offer, as wrk and h2load make) negotiates:
/// protocol, cipher suite, key exchange and ALPN; e.g. `TLSv1.3, TLS_AES_256_GCM_SHA384,
/// X25519, ALPN h2`.
fn s_client(addr: SocketAddr) -> (String, String) {
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "localhost", "-alpn", "h2,http/1.1"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let after = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .unwrap_or("?")
            .to_owned()
    };
    // `New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384`
    let new = after("New, ");
    let suite = new.rsplit(' ').next().unwrap_or("?").to_owned();
    let summary = format!(
        "{}, key exchange {}, ALPN {}",
        new,
        after("Server Temp Key:"),
        after("ALPN protocol:")
    );
    (suite, summary)
}

/// A test CA and a leaf for `localhost` / `127.0.0.1` signed by it, ECDSA P-256, PEM, PKCS#8
/// keys, in `dir`: `(ca.pem, leaf.pem, leaf.key)`.
fn make_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    run(&[
        &["req", "-x509", "-nodes", "-days", "30"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem"],
        &["-subj", "/CN=cutover bench CA"],
        &["-addext", "basicConstraints=critical,CA:TRUE"],
        &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    ]
    .concat());
    run(&[
        &["req", "-nodes"][..],
        &ec,
        &[
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write leaf.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    )
}

fn medians(runs: &[Figures]) -> Figures {
    let of = |f: fn(&Figures) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    Figures {
        rate: of(|f| f.rate),
        p50_ms: of(|f| f.p50_ms),
        p99_ms: of(|f| f.p99_ms),
        errors: runs
            .iter()
            .map(|f| f.errors.as_str())
            .filter(|e| !e.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    }
}

fn print_row(part: Part, name: &str, f: &Figures) {
    let ms = |v: f64| {
        if v.is_nan() {
            "-".to_owned()
        } else {
            format!("{v:.2}")
        }
    };
    println!(
        "{:<11} {name:<8} {:>12.0} {:<13} {:>8} {:>8}  {}",
        part.name(),
        f.rate,
        part.unit(),
        ms(f.p50_ms),
        ms(f.p99_ms),
        if f.errors.is_empty() {
            "none"
        } else {
            &f.errors
        }
    );
}

fn main() {
    let secs: u64 = env_number("BENCH_SECS", 10).max(1);
    let rounds: usize = env_number("BENCH_ROUNDS", 3).max(1);
    let conns: usize = env_number("HANDSHAKE_CONNS", 32).max(1);
    if !has("openssl", "version") {
        eprintln!("front bench: `openssl` is not installed (apt-get install openssl): no certificate, skipping");
        return;
    }
    let mut parts = vec![Part::Handshakes];
    if has("wrk", "--version") {
        parts.insert(0, Part::Tls);
    } else {
        println!(
            "front bench: `wrk` is not installed (apt-get install wrk): no keep-alive TLS figures"
        );
    }
    if has("h2load", "--version") {
        parts.push(Part::H2);
    } else {
        println!(
            "front bench: `h2load` is not installed (apt-get install nghttp2-client): no HTTP/2 figures"
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = make_certificate(dir.path());

    let (backend_addr, _backend) = demo_backend("v1");

    // The supervisor's own runtime has one worker per core: two here. `set_tls` runs inside it
    // (it spawns the task that watches the certificate's files).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let proxy = runtime.block_on(async {
        let proxy = Proxy::bind_held("127.0.0.1:0".parse().unwrap()).expect("bind cutover proxy");
        proxy.set_route(Route {
            backends: vec![Arc::new(Backend {
                id: "bench-0".into(),
                version: "v1".into(),
                addr: backend_addr,
            })],
            balance: Balance::RoundRobin,
            canary: None,
        });
        let spec = TlsSpec {
            cert: Some(cert.clone()),
            key: Some(key.clone()),
            acme: None,
            hsts: None,
            redirect_from: None,
        };
        proxy.set_tls("bench", Some(&spec)).expect("cutover's TLS");
        proxy.start_accepting();
        proxy
    });
    wait_for("cutover proxy", || {
        TcpStream::connect(proxy.local_addr).is_ok()
    });

    // The suite cutover negotiates with OpenSSL's default offer is the one both use.
    let (suite, cutover_tls) = s_client(proxy.local_addr);
    assert!(
        suite.starts_with("TLS_"),
        "cutover negotiated no TLS 1.3 suite: {cutover_tls}"
    );
    println!("cutover negotiates: {cutover_tls}");
    let mut targets = vec![("cutover", proxy.local_addr)];
    let mut nginx = None;
    if has("nginx", "-v") {
        let tls = NginxTls {
            cert: &cert,
            key: &key,
            ciphersuite: &suite,
        };
        let started =
            Nginx::start_tls(&dir.path().join("nginx"), &[backend_addr.to_string()], &tls);
        let (nginx_suite, nginx_tls) = s_client(started.listen);
        println!("nginx negotiates:   {nginx_tls}");
        assert_eq!(
            nginx_suite, suite,
            "nginx and cutover negotiate different suites"
        );
        targets.push(("nginx", started.listen));
        nginx = Some(started);
    } else {
        println!(
            "front bench: `nginx` is not installed (apt-get install nginx-light): no comparison"
        );
    }
    let rustls_suite = suite.replacen("TLS_", "TLS13_", 1);
    let connector = handshake_client(&ca, &rustls_suite);
    for (name, addr) in &targets {
        let check = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let negotiated = check
            .block_on(one_handshake(*addr, &connector))
            .unwrap_or_else(|e| panic!("the handshake client against {name}: {e}"));
        println!("handshake client against {name}: {negotiated}, no resumption");
    }
    println!("cipher suite of every run: {suite} (TLS 1.3), key exchange X25519");

    // A short warm-up each, so connection pools and caches are filled before measuring.
    for (_, addr) in &targets {
        if parts.contains(&Part::Tls) {
            wrk(&format!("https://{addr}/"), 2);
        }
        handshakes(*addr, 1, conns, &connector);
    }
    println!(
        "front bench: {rounds} alternating round(s) of {secs} s runs, backend `cutover demo-app` \
         (release); tls: wrk -t2 -c50 --latency https; handshakes: {conns} loops on 2 threads, \
         one GET with Connection: close each; h2: h2load -c10 -m10 -t2"
    );
    println!(
        "{:<11} {:<8} {:>12} {:<13} {:>8} {:>8}  errors",
        "part", "target", "rate", "", "p50 ms", "p99 ms"
    );
    let run = |part: Part, addr: SocketAddr| match part {
        Part::Tls => wrk(&format!("https://{addr}/"), secs),
        Part::Handshakes => handshakes(addr, secs, conns, &connector),
        Part::H2 => h2load(addr, secs),
    };
    // runs[part][target]
    let mut runs = vec![vec![Vec::<Figures>::new(); targets.len()]; parts.len()];
    for round in 0..rounds {
        println!("-- round {}", round + 1);
        for (p, &part) in parts.iter().enumerate() {
            for k in 0..targets.len() {
                let i = (round + k) % targets.len();
                let (name, addr) = targets[i];
                let f = run(part, addr);
                print_row(part, name, &f);
                runs[p][i].push(f);
            }
        }
    }
    println!("-- median of {rounds}");
    let medians: Vec<Vec<Figures>> = runs
        .iter()
        .map(|by_target| by_target.iter().map(|r| medians(r)).collect())
        .collect();
    for (p, &part) in parts.iter().enumerate() {
        for (i, (name, _)) in targets.iter().enumerate() {
            print_row(part, name, &medians[p][i]);
        }
    }
    if nginx.is_none() {
        return;
    }
    let mut all_met = true;
    for (p, &part) in parts.iter().enumerate() {
        let (ours, theirs) = (&medians[p][0], &medians[p][1]);
        let ratio = ours.rate / theirs.rate;
        let (met, target) = match part {
            Part::Tls => (
                ratio >= 1.0 && ours.p99_ms <= theirs.p99_ms,
                "req/s >= 1.0x, p99 <= nginx's",
            ),
            Part::Handshakes => (ratio >= 0.9, "handshakes/s >= 0.9x"),
            Part::H2 => (ratio >= 1.0, "req/s >= 1.0x"),
        };
        all_met &= met;
        let p99 = if part == Part::Tls {
            format!(", p99 {:.2}x", ours.p99_ms / theirs.p99_ms)
        } else {
            String::new()
        };
        println!(
            "{} cutover/nginx: {} {ratio:.2}x{p99} (target {target}: {})",
            part.name(),
            part.unit(),
            if met { "met" } else { "NOT MET" }
        );
    }
    println!(
        "verdict: targets (tls req/s >= nginx's and p99 <= nginx's, handshakes/s >= 0.9x, h2 \
         req/s >= nginx's; cipher {suite}) {}",
        if all_met { "MET" } else { "NOT MET" }
    );
    drop((proxy, nginx));
    runtime.shutdown_timeout(Duration::from_secs(1));
}
