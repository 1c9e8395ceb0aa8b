//! A Fast Purge stand-in that verifies every EdgeGrid signature, enforces
//! the body limit, the token buckets and the cache-tag rule, answers every
//! 7th request with a 503 and drops every 4th connection.
//!
//! The rules are Akamai's, from the Fast Purge API reference
//! (<https://techdocs.akamai.com/purge-cache/reference/>: "Rate limiting",
//! "Rate limit response examples", the 413 page) and its cache-tag docs,
//! quoted where each is enforced.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use edgecache::edgegrid::{Credentials, Signer};
use edgecache_purge::akamai::FastPurgeClient;
use edgecache_purge::akamai::RateLimits;
use edgecache_purge::{Backoff, TokenBucket};

#[derive(Clone)]
pub struct StandIn {
    pub signer: Arc<Signer>,
    pub requests: Arc<TokenBucket>,
    pub urls: Arc<TokenBucket>,
    pub cpcodes: Arc<TokenBucket>,
    pub tags: Arc<TokenBucket>,
    /// A refusal to hold the client to, and the early retries it refused.
    pub hold: Arc<Mutex<Option<Hold>>>,
    pub held: Arc<AtomicUsize>,
    pub seen: Arc<AtomicUsize>,
    pub accepted: Arc<Mutex<Vec<serde_json::Value>>>,
    /// When each request was accepted, and its path.
    pub accepted_at: Arc<Mutex<Vec<(std::time::SystemTime, String)>>>,
    pub paths: Arc<Mutex<HashSet<String>>>,
    pub too_large: Arc<AtomicUsize>,
    pub throttled: Arc<AtomicUsize>,
    pub unsigned: Arc<AtomicUsize>,
    pub largest_body: Arc<AtomicUsize>,
    pub dropped: Arc<AtomicUsize>,
    /// Edges that evict what a purge names once it is accepted.
    pub edges: super::edge::Edges,
}

/// The next request is refused (`429`) with these headers, which name a
/// wait; a retry before that wait has passed is refused again.
#[derive(Debug, Clone)]
pub struct Hold {
    pub headers: Vec<(&'static str, String)>,
    pub wait: std::time::Duration,
    pub until: Option<std::time::Instant>,
}

/// Akamai's cache-tag rule: "A single cache tag can't exceed 128 characters
/// and can only include alphanumeric characters, plus this class of
/// characters: [!#$%'+./^_`|~-]" (Property Manager's cacheTag behavior;
/// the purge docs list `:`, `@`, `*`, `<>`, `{}`, `\` as refused).
fn akamai_takes_tag(tag: &str) -> bool {
    tag.chars().count() <= 128
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%'+./^_`|~-".contains(c))
}

pub fn problem(status: u16, title: &str, detail: &str) -> Response {
    let body = serde_json::json!({ "httpStatus": status, "title": title, "detail": detail, "supportId": "17PY1" });
    Response::builder()
        .status(status)
        .header("content-type", "application/problem+json")
        .header("connection", "close")
        .body(axum::body::Body::from(body.to_string()))
        .expect("response")
}

pub async fn fast_purge(State(state): State<StandIn>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    let count = state.seen.fetch_add(1, Ordering::SeqCst) + 1;
    state.largest_body.fetch_max(body.len(), Ordering::SeqCst);
    state.paths.lock().expect("paths").insert(parts.uri.path().to_owned());
    if !crate::edgegrid_verified(&state.signer, &parts, &body) {
        state.unsigned.fetch_add(1, Ordering::SeqCst);
        return problem(401, "Unauthorized", "The signature does not match");
    }
    if body.len() >= 50_000 {
        state.too_large.fetch_add(1, Ordering::SeqCst);
        return problem(413, "Request Entity Too Large", "body over 50,000 bytes");
    }
    {
        let mut hold = state.hold.lock().expect("hold");
        if let Some(held) = hold.as_mut() {
            let now = std::time::Instant::now();
            let until = *held.until.get_or_insert(now + held.wait);
            if now < until {
                state.held.fetch_add(1, Ordering::SeqCst);
                let mut response = problem(429, "Rate Limit exceeded", "no tokens");
                for (name, value) in &held.headers {
                    response.headers_mut().insert(*name, value.parse().expect("header"));
                }
                return response;
            }
            *hold = None;
        }
    }
    if count.is_multiple_of(7) {
        return problem(503, "Service Unavailable", "try again");
    }
    let request: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    let objects = request["objects"].as_array().cloned().unwrap_or_default();
    // One bad object fails the whole request, with a 400.
    if parts.uri.path().contains("/tag/")
        && let Some(bad) = objects
            .iter()
            .find(|tag| tag.as_str().is_none_or(|tag| !akamai_takes_tag(tag)))
    {
        return problem(
            400,
            "Bad Request",
            &format!("Invalid cache tag contained in the request body: {bad}"),
        );
    }
    if objects
        .iter()
        .any(|object| object.as_str().is_some_and(|text| text.contains("bad")))
    {
        return problem(
            400,
            "Bad Request",
            "Invalid URL contained in the request body: https://bad.example/",
        );
    }
    // Rate limits: a refused request consumes no tokens.
    let objects_bucket = if parts.uri.path().contains("/cpcode/") {
        &state.cpcodes
    } else if parts.uri.path().contains("/tag/") {
        &state.tags
    } else {
        &state.urls
    };
    if state.requests.try_take(1).is_err() || objects_bucket.try_take(objects.len() as u32).is_err() {
        state.throttled.fetch_add(1, Ordering::SeqCst);
        return problem(429, "Too Many Requests", "rate limit");
    }
    let texts: Vec<&str> = objects.iter().filter_map(|object| object.as_str()).collect();
    if parts.uri.path().contains("/url/") {
        state.edges.purged_urls(&texts);
    } else if parts.uri.path().contains("/tag/") {
        state.edges.purged_tags(&texts);
    }
    state.accepted.lock().expect("accepted").extend(objects);
    state
        .accepted_at
        .lock()
        .expect("accepted_at")
        .push((std::time::SystemTime::now(), parts.uri.path().to_owned()));
    let answer = serde_json::json!({
        "httpStatus": 201, "estimatedSeconds": 0, "purgeId": format!("p-{count}"),
        "supportId": format!("s-{count}"), "detail": "Request accepted"
    });
    Response::builder()
        .status(201)
        .header("content-type", "application/json")
        .header("connection", "close")
        .body(axum::body::Body::from(answer.to_string()))
        .expect("response")
}

/// Drops every fourth connection as soon as it is accepted.
pub struct DroppingListener {
    inner: tokio::net::TcpListener,
    accepted: usize,
    dropped: Arc<AtomicUsize>,
}

impl axum::serve::Listener for DroppingListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, address) = axum::serve::Listener::accept(&mut self.inner).await;
            self.accepted += 1;
            if !self.accepted.is_multiple_of(4) {
                return (stream, address);
            }
            drop(stream);
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Limits for a client of a stand-in that enforces `limits`: the same
/// bursts at half the rates. The stand-in counts requests as they arrive;
/// at 60× Akamai's rates, loopback delays in a busy debug build are worth
/// hundreds of tokens, more than the client's own margin.
pub fn half_rates(limits: RateLimits) -> RateLimits {
    let half = |(burst, per_second): (u32, f64)| (burst, per_second / 2.0);
    RateLimits {
        requests: half(limits.requests),
        urls: half(limits.urls),
        cpcodes: half(limits.cpcodes),
        tags: half(limits.tags),
    }
}

/// Starts a stand-in enforcing `limits`, on a free port: its state, and
/// credentials for it.
pub async fn serve(limits: RateLimits) -> (StandIn, Credentials) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let host = listener.local_addr().expect("address").to_string();
    let credentials = Credentials::new(&host, "akab-client", "secret=", "akab-access").expect("credentials");
    let state = StandIn {
        signer: Arc::new(Signer::new(credentials.clone())),
        requests: Arc::new(TokenBucket::new(limits.requests.0, limits.requests.1)),
        urls: Arc::new(TokenBucket::new(limits.urls.0, limits.urls.1)),
        cpcodes: Arc::new(TokenBucket::new(limits.cpcodes.0, limits.cpcodes.1)),
        tags: Arc::new(TokenBucket::new(limits.tags.0, limits.tags.1)),
        hold: Arc::default(),
        held: Arc::default(),
        seen: Arc::default(),
        accepted: Arc::default(),
        accepted_at: Arc::default(),
        paths: Arc::default(),
        too_large: Arc::default(),
        throttled: Arc::default(),
        unsigned: Arc::default(),
        largest_body: Arc::default(),
        dropped: Arc::default(),
        edges: super::edge::Edges::default(),
    };
    let app = Router::new().fallback(fast_purge).with_state(state.clone());
    let dropping = DroppingListener {
        inner: listener,
        accepted: 0,
        dropped: Arc::clone(&state.dropped),
    };
    tokio::spawn(async move { axum::serve(dropping, app).await });
    (state, credentials)
}

/// An `.edgerc` for the stand-in, in `directory`.
pub fn edgerc(state: &StandIn, directory: &std::path::Path) -> std::path::PathBuf {
    let edgerc = directory.join(".edgerc");
    let host = state.signer.credentials().host();
    std::fs::write(
        &edgerc,
        format!("[default]\nhost = {host}\nclient_token = akab-client\nclient_secret = secret=\naccess_token = akab-access\n"),
    )
    .expect("write .edgerc");
    edgerc
}

/// Akamai's per-minute object rates applied per second (and requests × 60),
/// so a 20,000-URL purge takes a second or two, not a minute.
pub fn quick_limits() -> RateLimits {
    RateLimits {
        requests: (100, 3_000.0),
        urls: (10_000, 12_000.0),
        cpcodes: (300, 30.0),
        tags: (5_000, 500.0),
    }
}

/// A stand-in enforcing `limits`, and a client keeping to the same ones.
pub async fn start_with(limits: RateLimits) -> (StandIn, FastPurgeClient) {
    let (state, credentials) = serve(limits).await;
    let backoff = Backoff {
        base: std::time::Duration::from_millis(5),
        cap: std::time::Duration::from_millis(50),
    };
    let client_limits = half_rates(limits);
    let client = FastPurgeClient::new(credentials)
        .expect("client")
        .scheme("http")
        .rate_limits(client_limits)
        .backoff(backoff);
    (state, client)
}

/// A stand-in and a client on [`quick_limits`].
pub async fn start() -> (StandIn, FastPurgeClient) {
    start_with(quick_limits()).await
}
