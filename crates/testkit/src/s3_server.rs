//! An S3-compatible server the tests start themselves: `moto` in server
//! mode (`pip install 'moto[server]'`), on a free port, with one bucket.
//! It speaks what the server uses of S3 (multipart uploads, copies, ranged
//! reads, listings) and installs from PyPI in seconds.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct S3Server {
    pub port: u16,
    pub bucket: String,
    child: Child,
}

impl S3Server {
    /// Starts a server and creates `bucket`. Without `moto_server` the test
    /// fails and says how to install it, unless `EDGECACHE_SKIP_S3_TESTS=1`
    /// asks to skip. CI installs it and never skips.
    pub async fn start(bucket: &str) -> Option<S3Server> {
        if Command::new("moto_server")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            super::skip_or_fail(
                "moto_server (an S3-compatible test server)",
                "Install it with `pip install 'moto[server]'`",
                "EDGECACHE_SKIP_S3_TESTS",
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("address")
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let server = S3Server {
            port,
            bucket: bucket.to_owned(),
            child,
        };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(response) = client.put(format!("{}/{bucket}", server.endpoint())).send().await
                && response.status().is_success()
            {
                return Some(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto_server did not start on port {port}");
    }

    /// Freezes the server (SIGSTOP), as a bucket that hangs: connections
    /// are accepted by the kernel, and nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws what [`S3Server::pause`] froze.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status();
        assert!(status.is_ok_and(|status| status.success()), "kill -{signal} {pid}");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The variables a server process needs to reach the bucket.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// The bucket, through `object_store`, to look at what the server wrote.
    pub fn store(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_region("us-east-1")
            .build()
            .expect("an S3 client")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
