//! A real browser: Debian's `chromium`, headless, driven over WebDriver through `chromedriver`
//! (Debian's `chromium-driver`) with fantoccini, for tests of what a person sees on a page.
//!
//! chromedriver runs in a process group of its own, with the browser under it; [`Browser::quit`]
//! (or drop, when a test fails half-way) ends the session, kills that group and then any process
//! still naming the browser's temp profile, so no chromium outlives its test.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use tokio::runtime::Runtime;

use super::procs::kill_9;
use super::{free_port, wait_until};

/// How long chromedriver and the browser may take to start on a loaded machine.
const START: Duration = Duration::from_secs(60);

pub struct Browser {
    /// The runtime fantoccini's session lives on; every call is `block_on` on it.
    runtime: Runtime,
    client: Option<Client>,
    driver: Option<Child>,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port of 127.0.0.1 and a headless chromium session.
    pub fn start() -> Browser {
        let profile = tempfile::tempdir().expect("temp dir for the browser profile");
        let port = free_port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log"))
            .expect("chromedriver's log");
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own group: the browser it starts is killed with it, whatever the test does.
            .process_group(0)
            .spawn()
            .expect(
                "start chromedriver (Debian package chromium-driver; tests/run.sh installs it)",
            );
        let mut browser = Browser {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the browser"),
            client: None,
            driver: Some(driver),
            profile,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_until("chromedriver to listen", START, || {
            TcpStream::connect(addr).is_ok()
        });
        let capabilities = serde_json::json!({
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": [
                    "--headless=new",
                    // Root (as on CI) has no sandbox; the page is our own.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--window-size=1280,1100",
                    format!("--user-data-dir={}", browser.profile.path().join("chromium").display()),
                ],
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = browser
            .runtime
            .block_on(
                ClientBuilder::new(connector)
                    .capabilities(capabilities)
                    .connect(&format!("http://{addr}")),
            )
            .unwrap_or_else(|e| panic!("start a headless chromium session: {e}"));
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the browser session is open")
    }

    /// Opens `url` in the window and waits for the page to load.
    pub fn open(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The text of the first element matching `css`, as shown; `None` if there is none (or it
    /// was replaced while being read).
    pub fn text(&self, css: &str) -> Option<String> {
        self.runtime.block_on(async {
            let element = self.client().find(Locator::Css(css)).await.ok()?;
            element.text().await.ok()
        })
    }

    /// The attribute `name` of the first element matching `css`.
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.runtime.block_on(async {
            let element = self.client().find(Locator::Css(css)).await.ok()?;
            element.attr(name).await.ok().flatten()
        })
    }

    /// How many elements match `css` now.
    pub fn count(&self, css: &str) -> usize {
        self.runtime
            .block_on(self.client().find_all(Locator::Css(css)))
            .map_or(0, |found| found.len())
    }

    /// Runs `script` in the page and returns what it returns.
    pub fn run(&self, script: &str) -> serde_json::Value {
        self.runtime
            .block_on(self.client().execute(script, Vec::new()))
            .unwrap_or_else(|e| panic!("run {script:?} in the page: {e}"))
    }

    /// Waits until the first element matching `css` shows `expected`; on timeout, says what it
    /// showed.
    pub fn wait_for_text(&self, css: &str, expected: &str, deadline: Duration) {
        let start = std::time::Instant::now();
        loop {
            let seen = self.text(css);
            if seen.as_deref() == Some(expected) {
                return;
            }
            if start.elapsed() > deadline {
                panic!("timed out after {deadline:?} waiting for {css} to show {expected:?}; it showed {seen:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves what the window shows as a PNG at `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .unwrap_or_else(|e| panic!("take a screenshot: {e}"));
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Ends the session and chromedriver; returns the pids of processes that outlived them (none,
    /// if all went well).
    pub fn quit(mut self) -> Vec<u32> {
        self.stop();
        // A killed process is gone once the kernel has torn it down: give it a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = strays(self.profile.path());
            if left.is_empty() || std::time::Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(client) = self.client.take() {
            // The browser closes its windows and exits; bounded, the group kill follows anyway.
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.close()).await
            });
        }
        if let Some(mut driver) = self.driver.take() {
            let group = nix::unistd::Pid::from_raw(driver.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = driver.wait();
        }
        // A renderer or helper that left the group still names the profile on its command line.
        for pid in strays(self.profile.path()) {
            kill_9(pid);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The chromium binary: Debian's wrapper script, which sets its flags and runs the browser.
fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("chromium (Debian package chromium; tests/run.sh installs it)")
}

/// Live processes that name `profile` (chromium's, in their command lines).
fn strays(profile: &Path) -> Vec<u32> {
    super::procs::mentioning(profile)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}
