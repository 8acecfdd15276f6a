//! A real S3-compatible server for tests: `moto_server` on a free 127.0.0.1 port, killed on drop.
//!
//! The endpoint and credentials are passed explicitly (to the library through
//! `FetchOptions::s3`, to child processes through their environment), never through
//! `std::env::set_var`: tests run in parallel threads of one process.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cutover::agent::source::S3Settings;

use super::{free_port, wait_until};

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server (tests/run.sh installs it: pip install 'moto[server]')");
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        wait_until(
            "moto_server to accept connections",
            Duration::from_secs(60),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        moto
    }

    /// Settings that point the library at this server.
    pub fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint_url: Some(self.endpoint.clone()),
            region: Some("us-east-1".to_owned()),
            credentials: Some(("test".to_owned(), "test".to_owned())),
        }
    }

    /// The environment a child `cutover` needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }

    /// Creates `bucket` (if needed) and uploads `body` as `key`.
    pub async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) {
        let client = cutover::agent::source::s3::client(Some(&self.settings())).await;
        // Creating an existing bucket is fine for the tests; the put below is what matters.
        let _ = client.create_bucket().bucket(bucket).send().await;
        client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body.into())
            .send()
            .await
            .expect("upload to moto_server");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
