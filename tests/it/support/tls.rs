//! Certificates made by the real `openssl` (a test CA and leaves it signs), HTTPS clients that
//! trust only that CA and validate the chain as a browser does (reqwest on rustls), and a load of
//! such clients that counts every failure (a [`Load`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::load::{note_error, Load, LoadReport};

/// A certificate authority of the test's own, in `dir`.
pub struct TestCa {
    pub dir: PathBuf,
    pub cert: PathBuf,
    key: PathBuf,
}

/// A leaf's files, as an app's `tls:` names them.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).expect("make the CA's dir");
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3",
            "-subj",
            "/CN=cutover test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            path(&key),
            "-out",
            path(&cert),
        ]);
        TestCa {
            dir: dir.to_owned(),
            cert,
            key,
        }
    }

    /// A leaf for `names` (`shop.test`, `*.blog.test`), in files `stem.pem` and `stem.key`.
    pub fn issue(&self, stem: &str, names: &[&str]) -> Leaf {
        let leaf = Leaf {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        let csr = self.dir.join(format!("{stem}.csr"));
        let ext = self.dir.join(format!("{stem}.ext"));
        let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
                sans.join(",")
            ),
        )
        .expect("write the extensions");
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={}", names[0]),
            "-keyout",
            path(&leaf.key),
            "-out",
            path(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            path(&csr),
            "-CA",
            path(&self.cert),
            "-CAkey",
            path(&self.key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            path(&ext),
            "-out",
            path(&leaf.cert),
        ]);
        leaf
    }

    /// An HTTPS client that trusts this CA only, sends `names` to `addr` whatever DNS says, and
    /// speaks HTTP/1.1 only if `http1`, else what ALPN agrees (HTTP/2 with cutover).
    pub fn client(&self, addr: SocketAddr, names: &[&str], http1: bool) -> reqwest::Client {
        let pem = std::fs::read(&self.cert).expect("read the CA");
        let mut builder = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("the CA's PEM"))
            .https_only(true)
            .tls_info(true)
            .timeout(Duration::from_secs(30));
        for name in names {
            builder = builder.resolve(name, addr);
        }
        if http1 {
            builder = builder.http1_only();
        }
        builder.build().expect("an HTTPS client")
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// One GET on `client`: status, HTTP version, body, and the certificate the server showed.
pub async fn get(
    client: &reqwest::Client,
    url: &str,
) -> Result<(u16, reqwest::Version, String, Option<Vec<u8>>), String> {
    let response = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let version = response.version();
    let cert = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate().map(<[u8]>::to_vec));
    let body = response.text().await.map_err(|e| format!("body: {e:?}"))?;
    Ok((status, version, body, cert))
}

/// The DER of the first certificate in a PEM file.
pub fn der_of(pem: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(pem)
        .expect("a PEM certificate")
        .to_vec()
}

/// `clients` tasks sending `GET url` back to back on one shared client (so over HTTP/2 they
/// share its connection, as a browser's tabs do), counting answers by version and failures.
pub fn load(client: reqwest::Client, url: &str, clients: usize) -> Load {
    let url = url.to_owned();
    Load::spawn(clients, move |_, stop, report| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let result = get(&client, &url).await;
                note(&mut report.lock().unwrap(), result);
            }
        }
    })
}

type Answer = Result<(u16, reqwest::Version, String, Option<Vec<u8>>), String>;

fn note(report: &mut LoadReport, result: Answer) {
    match result {
        Ok((status, _, body, _)) if status < 400 => {
            report.ok += 1;
            if let Some(version) = body
                .strip_prefix("hello from ")
                .and_then(|r| r.split(' ').next())
            {
                *report.versions.entry(version.to_owned()).or_default() += 1;
            }
        }
        Ok((status, _, body, _)) => {
            *report.failed.entry(status).or_default() += 1;
            sample(report, format!("{status}: {body}"));
        }
        Err(err) => note_error(report, err),
    }
}

fn sample(report: &mut LoadReport, message: String) {
    if report.error_samples.len() < 10 {
        report.error_samples.push(message);
    }
}
