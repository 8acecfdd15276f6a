//! Let's Encrypt's test CA, Pebble (Debian package `pebble`, 2.4), on 127.0.0.1 for one test:
//! its own HTTPS certificate made by the test CA (`tls::TestCa`, the package ships none), its
//! DNS answered by `pebble-challtestsrv` (every name is 127.0.0.1; TXT records set over its
//! management API, as a DNS-01 hook does with a provider's), its validation port for HTTP-01
//! and TLS-ALPN-01 set to the ports the test's supervisor answers on, and, when asked, external
//! account binding required. Both processes are killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::tls::TestCa;
use super::{free_port, wait_until};

pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// The CA Pebble's own HTTPS API is signed by (what `tls.acme.ca` names).
    pub api_ca: PathBuf,
    /// The root Pebble issues under, fetched from its management API.
    pub root_pem: Vec<u8>,
    /// `pebble-challtestsrv`'s management API (`/set-txt`, `/clear-txt`).
    pub dns_management: SocketAddr,
    pub log: PathBuf,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// What a test asks of its Pebble.
pub struct PebbleSetup {
    /// Where Pebble checks HTTP-01 and TLS-ALPN-01.
    pub http_port: u16,
    pub tls_port: u16,
    /// Issued certificates' lifetime in seconds (Pebble's default: five years).
    pub validity: Option<u64>,
    /// An external account binding every new account must carry: key id and HMAC key
    /// (base64url).
    pub eab: Option<(String, String)>,
}

impl Pebble {
    /// Pebble checking HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`, without an
    /// external account binding.
    pub fn checking(http_port: u16, tls_port: u16, validity: Option<u64>) -> Pebble {
        Pebble::start(PebbleSetup {
            http_port,
            tls_port,
            validity,
            eab: None,
        })
    }

    pub fn start(setup: PebbleSetup) -> Pebble {
        let dir = tempfile::tempdir().expect("temp dir for pebble");
        let ca = TestCa::new(&dir.path().join("ca"));
        let leaf = ca.issue("pebble", &["localhost"]);
        let (api, management, dns, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let mut pebble = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": leaf.cert,
            "privateKey": leaf.key,
            "httpPort": setup.http_port,
            "tlsPort": setup.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(seconds) = setup.validity {
            pebble["certificateValidityPeriod"] = seconds.into();
        }
        if let Some((kid, key)) = &setup.eab {
            pebble["externalAccountBindingRequired"] = true.into();
            pebble["externalAccountMACKeys"] = serde_json::json!({ kid: key });
        }
        let config = dir.path().join("pebble.json");
        std::fs::write(&config, serde_json::json!({ "pebble": pebble }).to_string())
            .expect("write pebble's config");
        let log = dir.path().join("pebble.log");
        let out = || {
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(&log)
                .expect("pebble log")
        };
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .stdout(out())
            .stderr(out())
            .spawn()
            .expect("run pebble-challtestsrv (Debian package pebble)");
        let server = Command::new("pebble")
            .args(["-config", config.to_str().expect("UTF-8 path")])
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(out())
            .stderr(out())
            .spawn()
            .expect("run pebble (Debian package pebble)");
        let mut started = Pebble {
            directory: format!("https://localhost:{api}/dir"),
            api_ca: ca.cert.clone(),
            root_pem: Vec::new(),
            dns_management: SocketAddr::from(([127, 0, 0, 1], dns_mgmt)),
            log,
            children: vec![dns_server, server],
            _dir: dir,
        };
        for port in [api, management, dns, dns_mgmt] {
            wait_until(
                &format!("pebble on port {port}"),
                Duration::from_secs(20),
                || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            );
        }
        let management = SocketAddr::from(([127, 0, 0, 1], management));
        let client = ca.client(management, &["localhost"], true);
        let url = format!("https://localhost:{}/roots/0", management.port());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        started.root_pem = runtime
            .block_on(async { client.get(&url).send().await?.bytes().await })
            .expect("pebble's root from its management API")
            .to_vec();
        started
    }

    /// An HTTPS client that trusts only Pebble's root and sends `name` to `addr`.
    pub fn client(&self, addr: SocketAddr, name: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(&self.root_pem).expect("pebble's root PEM"),
            )
            .https_only(true)
            .tls_info(true)
            .resolve(name, addr)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTPS client")
    }

    /// Stops Pebble (and its DNS): no order can succeed afterwards.
    pub fn stop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- pebble's log ---\n{}", self.log_text());
        }
        self.stop();
    }
}
