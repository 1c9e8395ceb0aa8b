//! A real `edgecache serve` process, and an origin whose content a test
//! changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// `edgecache serve`, started on a free loopback port.
pub struct VersionsServer {
    pub address: SocketAddr,
    pub data: PathBuf,
    pub token: Option<String>,
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl VersionsServer {
    /// Starts the server on `data` with `--allow-private-origins` and these
    /// extra arguments and environment variables.
    pub async fn start(data: &Path, args: &[&str], env: &[(&str, &str)]) -> VersionsServer {
        Self::try_start(data, args, env)
            .await
            .unwrap_or_else(|log| panic!("the server did not start:\n{log}"))
    }

    /// Like [`VersionsServer::start`], but answers the log when the server exits instead.
    pub async fn try_start(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<VersionsServer, String> {
        let mut all_args = vec!["serve"];
        // A replica keeps nothing locally: its index and bodies are shared.
        if !args.contains(&"--index") {
            all_args.extend(["--data", data.to_str().expect("utf-8 path")]);
        }
        if !args.contains(&"--listen") {
            all_args.extend(["--listen", "127.0.0.1:0"]);
        }
        all_args.extend_from_slice(args);
        let mut command = super::command(all_args, env);
        command.env_remove("EDGECACHE_SERVER_TOKEN");
        command.envs(env.iter().copied());
        command.stderr(std::process::Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().expect("spawn edgecache serve");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let mut address = None;
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or(Ok(None))
        {
            log.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(at) = line.find("on http://") {
                address = line[at + "on http://".len()..].trim().parse().ok();
                break;
            }
        }
        let Some(address) = address else {
            let _ = child.wait().await;
            return Err(log.lock().unwrap().clone());
        };
        let log_writer = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                log_writer.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let token = env
            .iter()
            .find(|(name, _)| *name == "EDGECACHE_SERVER_TOKEN")
            .map(|(_, value)| value.to_string());
        Ok(VersionsServer {
            address,
            data: data.to_owned(),
            token,
            child,
            log,
            http: reqwest::Client::new(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// A request with the server's token, if it has one.
    pub fn request(&self, method: http::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The Prometheus text at `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self
            .request(http::Method::GET, "/metrics")
            .send()
            .await
            .expect("server answers");
        assert_eq!(response.status(), 200, "/metrics");
        response.text().await.expect("metrics text")
    }

    /// Sends a request and answers the status and the JSON body (`Null` when empty).
    pub async fn call(&self, method: http::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = request.send().await.expect("server answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Registers a resource; answers its id.
    pub async fn register(&self, body: Value) -> String {
        let (status, resource) = self.call(http::Method::PUT, "/v1/resources", Some(body)).await;
        assert!(
            status == 200 || status == 201,
            "registration answered {status}: {resource}"
        );
        resource["id"].as_str().expect("id").to_owned()
    }

    /// The resource's versions, newest first.
    pub async fn versions(&self, rid: &str, query: &str) -> Vec<Value> {
        let (status, page) = self
            .call(
                http::Method::GET,
                &format!("/v1/resources/{rid}/versions?{query}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        page["items"].as_array().expect("items").clone()
    }

    /// Waits until `condition` holds on the versions listing.
    pub async fn wait_for_versions(&self, rid: &str, what: &str, condition: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        for _ in 0..600 {
            let versions = self.versions(rid, "limit=1000").await;
            if condition(&versions) {
                return versions;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out waiting for {what}: {:#?}\nserver log:\n{}",
            self.versions(rid, "").await,
            self.log()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// `kill -9`.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("kill");
    }

    /// Sends SIGTERM and waits for the exit; answers the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("the server stops after SIGTERM")
            .expect("wait")
    }

    /// The server's peak resident memory so far, in bytes (Linux).
    pub fn peak_rss(&self) -> u64 {
        peak_rss(&self.pid().to_string())
    }
}

/// A data directory, an origin, and a server allowed to fetch from it.
pub async fn started() -> (tempfile::TempDir, ContentOrigin, VersionsServer) {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), &["--allow-private-origins"], &[]).await;
    (data, origin, server)
}

/// The peak resident memory of process `pid` (or `self`) so far, in bytes
/// (Linux; 0 elsewhere).
pub fn peak_rss(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Files under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[derive(Default)]
struct OriginState {
    /// Path → body; a missing path is a 404.
    bodies: Mutex<HashMap<String, String>>,
    /// Name → the `ETag` `/tagged/{name}` sends.
    etags: Mutex<HashMap<String, String>>,
    hits: Mutex<HashMap<String, usize>>,
    seen: Mutex<Vec<(String, HeaderMap)>>,
    down: AtomicBool,
    gate: Gate,
}

/// Requests held at `/gate/…`: how many now, the most at once, and the
/// most at once per `Host`.
#[derive(Default)]
struct Gate {
    open: tokio::sync::watch::Sender<bool>,
    held: AtomicUsize,
    peak: AtomicUsize,
    held_per_host: Mutex<HashMap<String, (usize, usize)>>,
}

/// An origin on 127.0.0.1 serving what the test sets:
///
/// - `/doc/{name}`: the body set with [`ContentOrigin::set`], with
///   `ETag: "<body>"` (304 to a matching `If-None-Match`) and
///   `Content-Disposition: attachment; filename="{name}.txt"`
/// - `/plain/{name}`: the same body, without validators
/// - `/bytes/{size}?chunk_delay_ms=N`: `size` bytes of a repeating
///   pattern, in 64 KiB chunks, without a length
/// - `/flaky/{n}`: `429` with `Retry-After: 1` to the first `n` requests,
///   then `ok`
/// - `/gate/{name}`: `name`, once [`ContentOrigin::open_gate`] is called;
///   until then the request is held and counted
/// - `/tagged/{name}`: the body set with [`ContentOrigin::set`], under the
///   `ETag` set with [`ContentOrigin::set_etag`]; `304` to a matching
///   `If-None-Match`
/// - `/cdn/{name}`: the body set with [`ContentOrigin::set`], fresh for
///   10 minutes, with cache tags as CDNs read them: `Edge-Cache-Tag:
///   product-{name}, every-product` and `Surrogate-Key: key-{name}`
/// - `/trickle/{name}`: `Content-Length: 1000000`, then one byte every 5 s
/// - `/status/{code}`: that status
/// - anything while [`ContentOrigin::down`] is on: 503
pub struct ContentOrigin {
    pub address: SocketAddr,
    /// Where it listens: `address`, then one per extra loopback address.
    pub addresses: Vec<SocketAddr>,
    state: Arc<OriginState>,
}

pub fn pattern_byte(index: u64) -> u8 {
    b"edgecache-versioned-"[(index % 20) as usize]
}

impl ContentOrigin {
    pub async fn start() -> ContentOrigin {
        Self::start_on_hosts(1).await
    }

    /// An origin listening on `hosts` loopback addresses (127.0.0.1,
    /// 127.0.0.2, …), so that a client sees that many different hosts.
    pub async fn start_on_hosts(hosts: u8) -> ContentOrigin {
        let state = Arc::new(OriginState::default());
        let app = Router::new()
            .route("/doc/{name}", axum::routing::get(doc))
            .route("/plain/{name}", axum::routing::get(plain))
            .route("/bytes/{size}", axum::routing::get(bytes))
            .route("/flaky/{n}", axum::routing::get(flaky))
            .route("/gate/{name}", axum::routing::get(gate))
            .route("/tagged/{name}", axum::routing::get(tagged))
            .route("/cdn/{name}", axum::routing::get(cdn))
            .route("/trickle/{name}", axum::routing::get(trickle))
            .route("/status/{code}", axum::routing::get(status))
            .layer(axum::middleware::from_fn_with_state(state.clone(), record))
            .with_state(state.clone());
        let mut addresses = Vec::new();
        for host in 1..=hosts.max(1) {
            let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::new(127, 0, 0, host), 0))
                .await
                .expect("bind a loopback address");
            addresses.push(listener.local_addr().expect("address"));
            let app = app.clone();
            tokio::spawn(async move {
                axum::serve(listener, app).await.expect("origin");
            });
        }
        ContentOrigin {
            address: addresses[0],
            addresses,
            state,
        }
    }

    /// Lets every held and later `/gate/…` request through.
    pub fn open_gate(&self) {
        self.state.gate.open.send_replace(true);
    }

    /// Requests held at the gate now.
    pub fn held(&self) -> usize {
        self.state.gate.held.load(Ordering::SeqCst)
    }

    /// The most requests held at the gate at once: in all, and for any one host.
    pub fn peak_held(&self) -> (usize, usize) {
        let per_host = self.state.gate.held_per_host.lock().unwrap();
        let host_peak = per_host.values().map(|(_, peak)| *peak).max().unwrap_or(0);
        (self.state.gate.peak.load(Ordering::SeqCst), host_peak)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn set(&self, name: &str, body: &str) {
        self.state
            .bodies
            .lock()
            .unwrap()
            .insert(name.to_owned(), body.to_owned());
    }

    pub fn set_etag(&self, name: &str, etag: &str) {
        self.state
            .etags
            .lock()
            .unwrap()
            .insert(name.to_owned(), etag.to_owned());
    }

    pub fn down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn hits(&self, path: &str) -> usize {
        self.state.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Request headers seen for `path`, in order.
    pub fn seen(&self, path: &str) -> Vec<HeaderMap> {
        let seen = self.state.seen.lock().unwrap();
        seen.iter()
            .filter(|(seen, _)| seen == path)
            .map(|(_, headers)| headers.clone())
            .collect()
    }
}

async fn record(State(state): State<Arc<OriginState>>, request: Request, next: axum::middleware::Next) -> Response {
    let path = request.uri().path().to_owned();
    *state.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    state.seen.lock().unwrap().push((path, request.headers().clone()));
    if state.down.load(Ordering::SeqCst) {
        return Response::builder().status(503).body(Body::from("down")).unwrap();
    }
    next.run(request).await
}

async fn doc(State(state): State<Arc<OriginState>>, UrlPath(name): UrlPath<String>, headers: HeaderMap) -> Response {
    let Some(body) = state.bodies.lock().unwrap().get(&name).cloned() else {
        return Response::builder().status(404).body(Body::empty()).unwrap();
    };
    let etag = format!("\"{}\"", body.replace(|c: char| !c.is_ascii_alphanumeric(), "-"));
    let builder = Response::builder()
        .header("etag", &etag)
        .header("content-type", "text/plain; charset=utf-8")
        .header("content-disposition", format!("attachment; filename=\"{name}.txt\""));
    if headers
        .get("if-none-match")
        .is_some_and(|value| value.as_bytes() == etag.as_bytes())
    {
        return builder.status(StatusCode::NOT_MODIFIED).body(Body::empty()).unwrap();
    }
    builder.body(Body::from(body)).unwrap()
}

async fn tagged(State(state): State<Arc<OriginState>>, UrlPath(name): UrlPath<String>, headers: HeaderMap) -> Response {
    let body = state.bodies.lock().unwrap().get(&name).cloned().unwrap_or_default();
    let etag = state.etags.lock().unwrap().get(&name).cloned().unwrap_or_default();
    let builder = Response::builder().header("etag", &etag);
    if headers
        .get("if-none-match")
        .is_some_and(|value| value.as_bytes() == etag.as_bytes())
    {
        return builder.status(StatusCode::NOT_MODIFIED).body(Body::empty()).unwrap();
    }
    builder.body(Body::from(body)).unwrap()
}

async fn cdn(State(state): State<Arc<OriginState>>, UrlPath(name): UrlPath<String>) -> Response {
    let Some(body) = state.bodies.lock().unwrap().get(&name).cloned() else {
        return Response::builder().status(404).body(Body::empty()).unwrap();
    };
    Response::builder()
        .header("cache-control", "max-age=600")
        .header("edge-cache-tag", format!("product-{name}, every-product"))
        .header("surrogate-key", format!("key-{name}"))
        .body(Body::from(body))
        .unwrap()
}

async fn trickle() -> Response {
    let stream = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x")), ()))
    });
    let first = futures_util::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x")) });
    Response::builder()
        .header("content-length", "1000000")
        .body(Body::from_stream(futures_util::StreamExt::chain(first, stream)))
        .unwrap()
}

async fn status(UrlPath(code): UrlPath<u16>) -> Response {
    Response::builder()
        .status(code)
        .body(Body::from(format!("status {code}")))
        .unwrap()
}

async fn plain(State(state): State<Arc<OriginState>>, UrlPath(name): UrlPath<String>) -> Response {
    match state.bodies.lock().unwrap().get(&name).cloned() {
        Some(body) => Response::builder()
            .header("content-type", "text/csv")
            .body(Body::from(body))
            .unwrap(),
        None => Response::builder().status(404).body(Body::empty()).unwrap(),
    }
}

async fn bytes(UrlPath(size): UrlPath<u64>, Query(query): Query<HashMap<String, u64>>) -> Response {
    let delay = Duration::from_millis(query.get("chunk_delay_ms").copied().unwrap_or(0));
    const CHUNK: u64 = 64 * 1024;
    let stream = futures_util::stream::unfold(0u64, move |sent| async move {
        if sent >= size {
            return None;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let length = CHUNK.min(size - sent);
        let chunk: Vec<u8> = (sent..sent + length).map(pattern_byte).collect();
        Some((Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)), sent + length))
    });
    Response::builder()
        .header("content-type", "application/octet-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn gate(State(state): State<Arc<OriginState>>, UrlPath(name): UrlPath<String>, headers: HeaderMap) -> Response {
    let host = headers
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let gate = &state.gate;
    let mut open = gate.open.subscribe();
    {
        // Counted under the lock, so the two peaks agree with each other.
        let mut per_host = gate.held_per_host.lock().unwrap();
        let (held, peak) = per_host.entry(host.clone()).or_default();
        *held += 1;
        *peak = (*peak).max(*held);
        let now = gate.held.fetch_add(1, Ordering::SeqCst) + 1;
        gate.peak.fetch_max(now, Ordering::SeqCst);
    }
    let _ = open.wait_for(|open| *open).await;
    {
        let mut per_host = gate.held_per_host.lock().unwrap();
        if let Some((held, _)) = per_host.get_mut(&host) {
            *held -= 1;
        }
        gate.held.fetch_sub(1, Ordering::SeqCst);
    }
    Response::builder().body(Body::from(name)).unwrap()
}

async fn flaky(State(state): State<Arc<OriginState>>, UrlPath(n): UrlPath<usize>) -> Response {
    let hits = state
        .hits
        .lock()
        .unwrap()
        .get(&format!("/flaky/{n}"))
        .copied()
        .unwrap_or(0);
    if hits <= n {
        return Response::builder()
            .status(429)
            .header("retry-after", "1")
            .body(Body::from("slow down"))
            .unwrap();
    }
    Response::builder().body(Body::from("ok")).unwrap()
}
