//! What edgecache's tests and benchmarks share: a real origin on
//! 127.0.0.1 that counts and records what reaches it, the vendors' API
//! stand-ins, harnesses that start Redis, PostgreSQL, an S3-compatible
//! server and Chromium, the `edgecache` binary as a user runs it, a counting
//! allocator, and a way to run one test in a process of its own. Not
//! published.

pub mod browser;
pub mod counting;
mod isolated;
pub mod logs;
mod missing;
pub mod postgres_server;
pub mod redis_cluster;
pub mod redis_server;
pub mod s3_server;
#[cfg(feature = "purge")]
pub mod stand_ins;
pub mod versions_server;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use edgecache::CacheMiddleware;
use http::{HeaderMap, StatusCode};
use reqwest_middleware::ClientWithMiddleware;

pub use isolated::{in_own_process, test_path};
pub use missing::skip_or_fail;

/// What the origin saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>, Arc<AtomicBool>, Arc<tokio::sync::Notify>);

pub struct Origin {
    pub address: SocketAddr,
    log: Log,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

impl Origin {
    /// Starts an origin whose behaviour is chosen by the path:
    ///
    /// - `/max-age/N`: `Cache-Control: max-age=N`
    /// - `/no-store`: `Cache-Control: no-store`
    /// - `/etag`: `ETag: "v1"`, `Cache-Control: no-cache`; 304 to `If-None-Match: "v1"`
    /// - `/fresh-etag`: `ETag: "v1"`, `max-age=60`; 304 to `If-None-Match: "v1"`
    /// - `/last-modified`: `Last-Modified`, `max-age=0`; 304 to a matching `If-Modified-Since`
    /// - `/status/N`: status N, `Last-Modified` (years ago)
    /// - `/vary`: `Vary: Accept-Language`, `Last-Modified`, echoes it
    /// - `/large/N`: N bytes, streamed in 8 KiB chunks without a length,
    ///   `Last-Modified`
    /// - `/slow/N`: after N ms, `max-age=60`
    /// - `/stale`: `ETag`, `max-age=0` (stored already stale); with
    ///   `?directive` also `stale-if-error=600`
    /// - `/refreshes` and `/refreshes-slowly`: `ETag`, `max-age=0` the first
    ///   time, `max-age=60` after (the latter after 300 ms)
    /// - `/tagged/T1,T2`: `Edge-Cache-Tag: T1,T2`, `max-age=60`
    /// - `/gate`: answers only once [`Origin::open_gate`] is called
    /// - `/gated-etag`: `ETag: "g"`, `max-age=0`; to `If-None-Match: "g"`,
    ///   a 304 with `max-age=60` once [`Origin::open_gate`] is called
    /// - `/trickle/{size}`: `max-age=60`; 128 KiB of `x` at once, the rest
    ///   (`y`) once [`Origin::open_gate`] is called
    /// - anything, while [`Origin::fail`] is on: `500`
    /// - anything else: 200 with only `Last-Modified` (years ago), which RFC
    ///   9111 heuristics keep fresh for a day
    ///
    /// Every body is `METHOD PATH #COUNT`, where COUNT counts the requests
    /// to that path, so a test can tell responses apart.
    pub async fn start() -> Origin {
        let log = Log::default();
        let app = Router::new().fallback(answer).with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let address = listener.local_addr().expect("origin address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Origin {
            address,
            log,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Lets the requests waiting at `/gate` through.
    pub fn open_gate(&self) {
        // A stored permit: the request need not be waiting yet.
        self.log.2.notify_one();
    }

    /// Answers `500` to everything while on.
    pub fn fail(&self, failing: bool) {
        self.log.1.store(failing, Ordering::SeqCst);
    }

    /// Stops listening and closes connections: requests then fail to connect.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.address, path_and_query)
    }

    /// Requests that reached the origin for this path (query ignored).
    pub fn hits(&self, path: &str) -> usize {
        self.seen(path).len()
    }

    pub fn seen(&self, path: &str) -> Vec<Seen> {
        self.log
            .0
            .lock()
            .expect("log")
            .iter()
            .filter(|seen| seen.path == path)
            .cloned()
            .collect()
    }

    pub fn total_hits(&self) -> usize {
        self.log.0.lock().expect("log").len()
    }
}

async fn answer(State(log): State<Log>, request: Request) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();
    let count = {
        let mut log = log.0.lock().expect("log");
        log.push(Seen {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
        });
        log.iter().filter(|seen| seen.path == path).count()
    };
    let body = format!("{method} {path} #{count}");
    if log.1.load(Ordering::SeqCst) {
        return Response::builder()
            .status(500)
            .body(Body::from("origin failure"))
            .expect("response");
    }
    let mut response = Response::builder();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or("");
    match segments.as_slice() {
        ["max-age", seconds] => response = response.header("cache-control", format!("max-age={seconds}")),
        ["no-store"] => response = response.header("cache-control", "no-store"),
        ["etag"] | ["fresh-etag"] => {
            let cache_control = if segments[0] == "etag" {
                "no-cache"
            } else {
                "max-age=60"
            };
            response = response.header("etag", "\"v1\"").header("cache-control", cache_control);
            if header("if-none-match") == "\"v1\"" {
                return response
                    .status(StatusCode::NOT_MODIFIED)
                    .body(Body::empty())
                    .expect("response");
            }
        }
        ["last-modified"] => {
            response = response
                .header("last-modified", LAST_MODIFIED)
                .header("cache-control", "max-age=0");
            if header("if-modified-since") == LAST_MODIFIED {
                return response
                    .status(StatusCode::NOT_MODIFIED)
                    .body(Body::empty())
                    .expect("response");
            }
        }
        ["gated-etag"] => {
            response = response.header("etag", "\"g\"");
            if header("if-none-match") == "\"g\"" {
                log.2.notified().await;
                return response
                    .status(StatusCode::NOT_MODIFIED)
                    .header("cache-control", "max-age=60")
                    .body(Body::empty())
                    .expect("response");
            }
            response = response.header("cache-control", "max-age=0");
        }
        ["gate"] => {
            log.2.notified().await;
            response = response.header("cache-control", "max-age=60");
        }
        ["tagged", tags] => {
            response = response
                .header("edge-cache-tag", *tags)
                .header("cache-control", "max-age=60");
        }
        ["slow", millis] => {
            tokio::time::sleep(Duration::from_millis(millis.parse().expect("millis in path"))).await;
            response = response.header("cache-control", "max-age=60");
        }
        ["stale"] => {
            let directive = request.uri().query() == Some("directive");
            let cache_control = if directive {
                "max-age=0, stale-if-error=600"
            } else {
                "max-age=0"
            };
            response = response
                .header("etag", format!("\"s{count}\""))
                .header("cache-control", cache_control);
        }
        ["refreshes"] | ["refreshes-slowly"] => {
            if count > 1 && segments[0] == "refreshes-slowly" {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let cache_control = if count == 1 { "max-age=0" } else { "max-age=60" };
            response = response
                .header("etag", format!("\"r{count}\""))
                .header("cache-control", cache_control);
        }
        ["status", code] => {
            response = response
                .status(code.parse::<u16>().expect("status code in path"))
                .header("last-modified", LAST_MODIFIED);
        }
        ["vary"] => {
            response = response
                .header("vary", "Accept-Language")
                .header("last-modified", LAST_MODIFIED);
            let body = format!("{body} lang={}", header("accept-language"));
            return response.body(Body::from(body)).expect("response");
        }
        ["trickle", size] => {
            // 128 KiB at once, the rest only once the gate opens.
            use futures_util::StreamExt as _;
            response = response.header("cache-control", "max-age=60");
            let size: usize = size.parse().expect("size in path");
            let first = size.min(128 * 1024);
            let gate = log.clone();
            let chunks =
                futures_util::stream::once(
                    async move { Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; first])) },
                )
                .chain(futures_util::stream::once(async move {
                    gate.2.notified().await;
                    Ok(bytes::Bytes::from(vec![b'y'; size - first]))
                }));
            return response.body(Body::from_stream(chunks)).expect("response");
        }
        ["large", size] => {
            response = response.header("last-modified", LAST_MODIFIED);
            let size: usize = size.parse().expect("size in path");
            let chunks = (0..size.div_ceil(8192)).map(move |index| {
                let len = 8192.min(size - index * 8192);
                Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; len]))
            });
            return response
                .body(Body::from_stream(futures_util::stream::iter(chunks)))
                .expect("response");
        }
        _ => response = response.header("last-modified", LAST_MODIFIED),
    }
    response.body(Body::from(body)).expect("response")
}

/// Whether a request carries a valid EdgeGrid signature for `signer`'s
/// credentials, recomputed from its own timestamp and nonce.
pub fn edgegrid_verified(signer: &edgecache::edgegrid::Signer, parts: &http::request::Parts, body: &[u8]) -> bool {
    let Ok(url) = url::Url::parse(&format!("http://{}{}", signer.credentials().host(), parts.uri)) else {
        return false;
    };
    let Some(header) = parts.headers.get("authorization").and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let field = |name: &str| {
        header
            .split(';')
            .find_map(|part| part.trim_start_matches("EG1-HMAC-SHA256 ").strip_prefix(name))
    };
    let (Some(timestamp), Some(nonce)) = (field("timestamp="), field("nonce=")) else {
        return false;
    };
    let mut headers = parts.headers.clone();
    headers.remove("host"); // signed as the URL's authority
    header == signer.authorization_at(&parts.method, &url, &headers, body, timestamp, nonce)
}

/// What a run of the `edgecache` binary printed.
pub struct CliRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `edgecache` binary as a user would, without the environment
/// variables that would change its defaults.
pub async fn edgecache<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> CliRun {
    edgecache_with_env(args, &[]).await
}

/// Runs the `edgecache` binary with these environment variables added.
pub async fn edgecache_with_env<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
    env: &[(&str, &str)],
) -> CliRun {
    let output = command(args, env).output().await.expect("run edgecache");
    CliRun {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The `edgecache` command, not yet started: defaults-changing variables
/// removed, these added.
pub fn command<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
    env: &[(&str, &str)],
) -> tokio::process::Command {
    // The default cache goes under the platform's cache directory: a
    // temporary one here, so no test writes into the real home.
    static CACHE_HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let cache_home = CACHE_HOME.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    let mut command = tokio::process::Command::new(binary());
    command
        .args(args)
        .env("XDG_CACHE_HOME", cache_home.path())
        .env_remove("EDGECACHE_CACHE")
        .env_remove("EDGECACHE_LOG")
        .env_remove("AKAMAI_HOST");
    for (name, _) in std::env::vars() {
        if name.starts_with("ALIBABA_CLOUD_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command
}

pub fn client(cache: &CacheMiddleware) -> ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(cache.clone())
        .build()
}

/// GETs a URL and returns (x-cache, body).
pub async fn get(client: &ClientWithMiddleware, url: &str) -> (String, String) {
    let response = client.get(url).send().await.expect("request");
    let x_cache = response
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default();
    (x_cache, response.text().await.expect("body"))
}

/// Sends requests until one is a `HIT`, for at most `budget`.
pub async fn until_hit(client: &ClientWithMiddleware, url: &str, budget: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < budget {
        if get(client, url).await.0 == "HIT" {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Every byte of every file in a directory (the database, its WAL, …).
pub fn all_bytes_in(directory: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(directory).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            bytes.extend(std::fs::read(&path).expect("read file"));
        }
    }
    bytes
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle.as_bytes())
}

/// The `edgecache` binary cargo built beside the running test binary
/// (`target/<profile>/edgecache`, the test in `target/<profile>/deps/`).
fn binary() -> std::path::PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    let profile = test
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the test binary sits in target/<profile>/deps");
    let binary = profile.join(format!("edgecache{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: tests that run the `edgecache` binary belong in edgecache-cli (crates/cli/tests), whose tests cargo builds it for",
        binary.display()
    );
    binary
}
