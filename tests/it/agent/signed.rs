//! Signed manifests through the real binary: manifests, signatures and the archive on a real HTTP
//! server, signatures made by the real `minisign`, trusted keys in a trust file (`--trust` or
//! `CUTOVER_TRUST`). A refused manifest exits 8, names what failed, runs no hook, fetches no
//! archive and leaves dest alone; without keys nothing changes.

use std::path::PathBuf;

use super::input::consul_events;
use super::{sha256_hex, snapshot, tar_gz, Entry, Run, Site};
use crate::support::archive::md5_hex;
use crate::support::http_server::HttpServer;
use crate::support::minisign::{comment, fresh, trust_file, Key};

/// A site whose manifests are served over HTTP, with one trusted key.
struct Signed {
    site: Site,
    http: HttpServer,
    key: Key,
    trust: PathBuf,
    /// `src` and its sha256.
    src: String,
    sum: String,
}

impl Signed {
    fn new() -> Signed {
        let site = Site::new();
        let http = HttpServer::start();
        let key = Key::generate();
        let trust = trust_file(&site.path(""), &[&key]);
        let archive = tar_gz(None, &[Entry::File("index.html", b"signed")]);
        http.serve("/app.tar.gz", archive.clone());
        Signed {
            src: http.url("/app.tar.gz"),
            sum: sha256_hex(&archive),
            site,
            http,
            key,
            trust,
        }
    }

    /// A plain manifest of the archive with hooks that leave a mark in cwd/.
    fn yaml(&self, checksum: &str, extra: &str) -> String {
        format!(
            "src: {}\nchecksum: {checksum}\ndest: {}\ncommands:\n  pre: [touch pre-ran]\n  success: [touch success-ran]\n  failure: [touch failure-ran]\n{extra}",
            self.src,
            self.site.dest().display()
        )
    }

    /// Writes `yaml` as `name`, lets `sign` sign the file, serves both; returns the manifest URL.
    fn publish(&self, name: &str, yaml: &str, sign: impl FnOnce(&std::path::Path)) -> String {
        let path = self.site.path(name);
        std::fs::write(&path, yaml).expect("write manifest");
        sign(&path);
        let body = std::fs::read(&path).expect("manifest");
        self.http.serve(&format!("/{name}"), body);
        let sig = PathBuf::from(format!("{}.minisig", path.display()));
        if let Ok(sig) = std::fs::read(&sig) {
            self.http.serve(&format!("/{name}.minisig"), sig);
        }
        self.http.url(&format!("/{name}"))
    }

    fn apply(&self, url: &str) -> Run {
        let mut cmd = self.site.agent();
        cmd.arg("apply").arg(url).arg("--trust").arg(&self.trust);
        self.site.run_with(&mut cmd, "")
    }

    fn archive_fetches(&self) -> usize {
        self.http
            .request_heads()
            .iter()
            .filter(|h| h.starts_with("GET /app.tar.gz"))
            .count()
    }

    #[track_caller]
    fn assert_nothing_ran(&self, what: &str) {
        for mark in ["pre-ran", "success-ran", "failure-ran"] {
            assert!(
                !self.site.path("cwd").join(mark).exists(),
                "{what}: no hook runs ({mark})"
            );
        }
        assert_eq!(
            self.archive_fetches(),
            0,
            "{what}: the archive is not fetched"
        );
    }
}

#[test]
fn a_signed_manifest_deploys_and_its_version_is_recorded() {
    let s = Signed::new();
    let url = s.publish("m.yml", &s.yaml(&s.sum, ""), |p| {
        s.key.sign(p, &fresh("site", "1.4.2"))
    });
    s.apply(&url)
        .expect_code(0)
        .expect_stderr("signature ok: site 1.4.2 signed by key")
        .expect_stderr(&format!("Deploy manifest succeeded: {url}"));
    assert_eq!(super::read(&s.site.dest().join("index.html")), "signed");
    assert!(s.site.path("cwd/success-ran").exists());
    let record = super::read(&s.site.path("state/signed/site.json"));
    assert!(record.contains("\"version\": \"1.4.2\""), "{record}");
}

/// Each way a manifest can fail to be trusted: its case, how it is published, the message.
#[test]
fn untrusted_manifests_are_refused_with_their_reason_and_nothing_runs() {
    let other_key = Key::generate();
    type Publish = fn(&Signed, &Key) -> String;
    let cases: Vec<(&str, Publish, &str)> = vec![
        (
            "unsigned",
            |s: &Signed, _: &Key| s.publish("m.yml", &s.yaml(&s.sum, ""), |_| {}),
            "manifest is not signed: could not fetch its signature",
        ),
        (
            "signed by a key that is not trusted",
            |s: &Signed, other: &Key| {
                s.publish("m.yml", &s.yaml(&s.sum, ""), |p| {
                    other.sign(p, &fresh("site", "1"))
                })
            },
            "which is not among the trusted keys",
        ),
        (
            "YAML changed after signing",
            |s: &Signed, _: &Key| {
                let url = s.publish("m.yml", &s.yaml(&s.sum, ""), |p| {
                    s.key.sign(p, &fresh("site", "1"))
                });
                let tampered = s.yaml(&s.sum, "excludes: [x]\n");
                s.http.serve("/m.yml", tampered.into_bytes());
                url
            },
            "does not match the manifest",
        ),
        (
            "expired",
            |s: &Signed, _: &Key| {
                s.publish("m.yml", &s.yaml(&s.sum, ""), |p| {
                    s.key.sign(p, &comment("site", "1", "2020-01-01T00:00:00Z"))
                })
            },
            "signed for site 1 until 2020-01-01T00:00:00Z, which has passed",
        ),
        (
            "signed for another app",
            |s: &Signed, _: &Key| {
                let app = format!(
                    "app:\n  name: shop\n  run: ./shop\n  listen: 127.0.0.1:{}\n",
                    crate::support::free_port()
                );
                s.publish("m.yml", &s.yaml(&s.sum, &app), |p| {
                    s.key.sign(p, &fresh("admin", "1"))
                })
            },
            "signed for app admin but its app.name is shop",
        ),
        (
            "minisign's default comment",
            |s: &Signed, _: &Key| s.publish("m.yml", &s.yaml(&s.sum, ""), |p| s.key.sign_plain(p)),
            "has no cutover trusted comment (it does not start with `cutover`)",
        ),
        (
            "an md5 checksum",
            |s: &Signed, _: &Key| {
                let archive = tar_gz(None, &[Entry::File("index.html", b"signed")]);
                let md5 = md5_hex(&archive);
                s.publish("m.yml", &s.yaml(&md5, ""), |p| {
                    s.key.sign(p, &fresh("site", "1"))
                })
            },
            "manifest has an md5 checksum, refused with trusted keys",
        ),
    ];
    for (what, publish, expected) in cases {
        let s = Signed::new();
        let before = s.site.existing_dest("index.html", "live");
        let url = publish(&s, &other_key);
        let run = s.apply(&url);
        run.expect_code(8)
            .expect_stderr(&format!("Deploy manifest failed: {url}: "))
            .expect_stderr(expected);
        assert_eq!(snapshot(&s.site.dest()), before, "{what}: dest untouched");
        s.assert_nothing_ran(what);
    }
}

#[test]
fn an_older_signed_version_is_refused_once_a_newer_one_deployed() {
    let s = Signed::new();
    let newer = s.publish("new.yml", &s.yaml(&s.sum, ""), |p| {
        s.key.sign(p, &fresh("site", "1.10.0"))
    });
    let older = s.publish("old.yml", &s.yaml(&s.sum, ""), |p| {
        s.key.sign(p, &fresh("site", "1.9.0"))
    });
    s.apply(&newer).expect_code(0);
    std::fs::remove_file(s.site.path("cwd/success-ran")).expect("success hook ran");
    let fetches = s.archive_fetches();
    s.apply(&older)
        .expect_code(8)
        .expect_stderr("manifest is site 1.9.0, older than 1.10.0 deployed here")
        .expect_stderr("cutover rollback");
    assert_eq!(s.archive_fetches(), fetches, "the replay fetched nothing");
    assert!(!s.site.path("cwd/success-ran").exists());
    assert!(!s.site.path("cwd/failure-ran").exists());
    // The same version again is not a downgrade (a retry, a node catching up).
    s.apply(&newer).expect_code(0);
}

#[test]
fn every_stdin_input_is_checked_and_consul_still_gets_exit_0() {
    let s = Signed::new();
    let before = s.site.existing_dest("index.html", "live");
    let url = s.publish("m.yml", &s.yaml(&s.sum, ""), |_| {});
    let agent = || {
        let mut cmd = s.site.agent();
        cmd.env("CUTOVER_TRUST", &s.trust);
        cmd
    };
    let refused = "manifest is not signed";
    s.site
        .run_with(&mut agent(), &format!("{url}\n"))
        .expect_code(8)
        .expect_stderr(refused);
    let mut consul = agent();
    consul.env("CONSUL_INDEX", "3");
    s.site
        .run_with(&mut consul, &consul_events(&url))
        .expect_code(0)
        .expect_stderr(refused);
    let mut serf = agent();
    serf.env("SERF_EVENT", "user")
        .env("SERF_USER_EVENT", "deploy")
        .env("SERF_USER_LTIME", "9");
    s.site
        .run_with(&mut serf, &format!("{url}\n"))
        .expect_code(8)
        .expect_stderr(refused);
    assert_eq!(snapshot(&s.site.dest()), before);
    s.assert_nothing_ran("stdin inputs");
}

#[test]
fn a_trust_file_that_cannot_be_read_refuses_every_manifest() {
    let s = Signed::new();
    let url = s.publish("m.yml", &s.yaml(&s.sum, ""), |p| {
        s.key.sign(p, &fresh("site", "1"))
    });
    std::fs::write(&s.trust, "trusted_keys: []\n").expect("empty the trust file");
    s.apply(&url)
        .expect_code(8)
        .expect_stderr("the list is empty");
    s.assert_nothing_ran("empty trust file");
}

#[test]
fn without_trusted_keys_unsigned_and_md5_manifests_deploy_as_before() {
    let s = Signed::new();
    let archive = tar_gz(None, &[Entry::File("index.html", b"signed")]);
    let md5 = md5_hex(&archive);
    let url = s.publish("m.yml", &s.yaml(&md5, ""), |_| {});
    let mut cmd = s.site.agent();
    cmd.arg("apply").arg(&url);
    s.site.run_with(&mut cmd, "").expect_code(0);
    assert_eq!(super::read(&s.site.dest().join("index.html")), "signed");
    assert!(
        !s.http
            .request_heads()
            .iter()
            .any(|h| h.contains(".minisig")),
        "no signature is asked for"
    );
}

#[test]
fn staging_checks_the_signature_as_a_deploy_does() {
    let s = Signed::new();
    let app = format!(
        "app:\n  name: site\n  version: \"2\"\n  run: ./site\n  listen: 127.0.0.1:{}\n",
        crate::support::free_port()
    );
    let stage = |url: &str| {
        let mut cmd = s.site.agent();
        cmd.args(["apply", "--stage-only", url, "--trust"])
            .arg(&s.trust);
        s.site.run_with(&mut cmd, "")
    };
    let unsigned = s.publish("unsigned.yml", &s.yaml(&s.sum, &app), |_| {});
    stage(&unsigned)
        .expect_code(8)
        .expect_stderr("manifest is not signed");
    s.assert_nothing_ran("an unsigned manifest staged");
    assert!(!s.site.dest().join("releases").exists());
    let signed = s.publish("signed.yml", &s.yaml(&s.sum, &app), |p| {
        s.key.sign(p, &fresh("site", "2"))
    });
    stage(&signed)
        .expect_code(0)
        .expect_stderr("signature ok: site 2 signed by key");
    assert_eq!(
        super::read(&s.site.dest().join("releases/2/index.html")),
        "signed"
    );
    for mark in ["pre-ran", "success-ran", "failure-ran"] {
        assert!(
            !s.site.path("cwd").join(mark).exists(),
            "staging runs no hook: {mark}"
        );
    }
}
