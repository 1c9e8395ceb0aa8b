//! `rediss://`: the Redis store over TLS, against a `redis-server` started
//! with a certificate authority the test creates.
#![cfg(feature = "redis")]

use edgecache_testkit as common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::{Origin, client, get};
use edgecache::CacheMiddleware;
use edgecache::store::{RedisStore, Store};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A TLS-only `redis-server` on a free port; killed on drop.
struct TlsRedis {
    port: u16,
    ca_pem: String,
    child: Child,
    _directory: tempfile::TempDir,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let directory = tempfile::tempdir().expect("tempdir");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("ca key")).expect("ca");
        let server_key = KeyPair::generate().expect("server key");
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params")
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let write = |name: &str, text: &str| {
            let path = directory.path().join(name);
            std::fs::write(&path, text).expect("write pem");
            path
        };
        let ca_file = write("ca.crt", &ca.pem());
        let cert_file = write("server.crt", &server.pem());
        let key_file = write("server.key", &server_key.serialize_pem());
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("address")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(&cert_file)
            .arg("--tls-key-file")
            .arg(&key_file)
            .arg("--tls-ca-cert-file")
            .arg(&ca_file)
            .arg("--dir")
            .arg(directory.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        TlsRedis {
            port,
            ca_pem: ca.pem(),
            child,
            _directory: directory,
        }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    async fn store(&self) -> RedisStore {
        let store = RedisStore::open_with_ca(&self.url(), self.ca_pem.as_bytes())
            .await
            .expect("open");
        // Wait until the server answers over TLS.
        let start = Instant::now();
        while store.stats().await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not answer over TLS; does this build support --tls-port?"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_share_entries_over_rediss() {
    // Checks that redis-server is installed, loudly.
    if RedisServer::start().await.is_none() {
        return;
    }
    let server = TlsRedis::start();
    let origin = Origin::start().await;
    let first = CacheMiddleware::builder()
        .store(server.store().await)
        .build()
        .expect("cache");
    let second = CacheMiddleware::builder()
        .store(server.store().await.local_tier(1 << 20))
        .build()
        .expect("cache");
    let url = origin.url("/max-age/60");
    assert_eq!(get(&client(&first), &url).await.0, "MISS");
    assert_eq!(
        get(&client(&second), &url).await,
        ("HIT".into(), "GET /max-age/60 #1".into())
    );
    assert_eq!(origin.hits("/max-age/60"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_an_unknown_authority_is_refused_and_the_cache_steps_aside() {
    if RedisServer::start().await.is_none() {
        return;
    }
    let server = TlsRedis::start();
    let _ = server.store().await; // up
    let untrusted = RedisStore::open(&server.url()).await.expect("open");
    let error = untrusted
        .stats()
        .await
        .expect_err("the public roots don't know this CA");
    assert!(error.to_string().contains("127.0.0.1"), "{error}");

    let origin = Origin::start().await;
    let cache = CacheMiddleware::builder().store(untrusted).build().expect("cache");
    let client = client(&cache);
    for attempt in 1..=2 {
        assert_eq!(
            get(&client, &origin.url("/max-age/60")).await,
            ("MISS".into(), format!("GET /max-age/60 #{attempt}"))
        );
    }
}
