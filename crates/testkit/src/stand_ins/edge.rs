//! A CDN edge stand-in: a caching proxy on 127.0.0.1 in front of its own
//! origin, answering with one vendor's cache headers and `Age`, and evicting
//! when the vendor's purge API stand-in accepts a purge. One can lie: accept
//! every purge and keep serving the old copy.
//!
//! The headers are the vendors' own, each quoted where it is written:
//! - Akamai: `X-Cache` only when asked with `Pragma: akamai-x-cache-on`
//!   (techdocs.akamai.com/edge-diagnostics/docs/pragma-headers), values
//!   `TCP_MISS`, `TCP_HIT`, `TCP_MEM_HIT`, "… from {edge server}";
//! - Cloudflare: `CF-Cache-Status: HIT | MISS`
//!   (developers.cloudflare.com/cache/concepts/cache-responses), `CF-Ray`
//!   ending in the data centre, `Age` on hits;
//! - Fastly: `X-Cache`, `X-Cache-Hits`, `X-Served-By: cache-{dc}{node}-{DC}`
//!   (fastly.com/documentation/reference/http/http-headers/X-Served-By), `Age`;
//! - Alibaba Cloud: `X-Cache: HIT TCP_MEM_HIT dirn:-2:-2` / `MISS TCP_MISS …`,
//!   `Via`, `Ali-Swift-Global-Savetime` (Unix seconds when the copy was saved), `Age`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// Whose edge it plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Akamai,
    Cloudflare,
    Fastly,
    Alibaba,
}

/// A stored copy.
#[derive(Debug, Clone)]
struct Copy {
    body: Bytes,
    stored_at: SystemTime,
    /// The origin's `Date`, kept as caches keep it.
    date: SystemTime,
    hits: u64,
    tags: Vec<String>,
}

struct Inner {
    flavor: Flavor,
    origin: SocketAddr,
    client: reqwest::Client,
    copies: Mutex<HashMap<String, Copy>>,
    lying: AtomicBool,
    /// How long after a purge is accepted the copies go (edges settle in seconds).
    settle: Mutex<Duration>,
    /// Every request to the edge: when, the method, the path.
    requests: Mutex<Vec<(Instant, Method, String)>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// How long the edge takes over each answer.
    delay: Mutex<Duration>,
    /// Every request the origin got: the path.
    origin_requests: Mutex<Vec<String>>,
}

/// An edge on a free port, with its origin on another.
#[derive(Clone)]
pub struct Edge {
    pub address: SocketAddr,
    inner: Arc<Inner>,
}

/// The edges a vendor's purge API stand-in evicts from when it accepts a purge.
#[derive(Clone, Default)]
pub struct Edges(Arc<Mutex<Vec<Edge>>>);

impl Edges {
    pub fn attach(&self, edge: &Edge) {
        self.0.lock().expect("edges").push(edge.clone());
    }

    fn each(&self, mut act: impl FnMut(&Edge)) {
        for edge in self.0.lock().expect("edges").iter() {
            act(edge);
        }
    }

    /// URLs purged: `https://host/path?query`, or `host/path` as Fastly names them.
    pub fn purged_urls<S: AsRef<str>>(&self, urls: &[S]) {
        self.each(|edge| edge.evict(urls.iter().filter_map(|url| edge.path_of(url.as_ref())).collect(), &[]));
    }

    /// Cache tags (surrogate keys) purged.
    pub fn purged_tags<S: AsRef<str>>(&self, tags: &[S]) {
        let tags: Vec<String> = tags.iter().map(|tag| tag.as_ref().to_owned()).collect();
        self.each(|edge| edge.evict(Vec::new(), &tags));
    }

    /// URLs to prefetch (Alibaba Cloud's `PushObjectCache`): the edge fetches each from its origin.
    pub fn prefetch<S: AsRef<str>>(&self, urls: &[S]) {
        self.each(|edge| {
            for path in urls.iter().filter_map(|url| edge.path_of(url.as_ref())) {
                let edge = edge.clone();
                tokio::spawn(async move {
                    let _ = edge.fetch_and_store(&path).await;
                });
            }
        });
    }
}

/// A path's cache tag: its first segment (`/product-42/a.css` → `product-42`).
fn tag_of(path: &str) -> String {
    path.trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The origin: each path's body names the path and how many times the
/// origin was asked; its first segment is its cache tag.
async fn origin(State(inner): State<Arc<Inner>>, uri: Uri) -> Response {
    let path = uri.path_and_query().map_or("/", |path| path.as_str()).to_owned();
    let count = {
        let mut seen = inner.origin_requests.lock().expect("origin");
        seen.push(path.clone());
        seen.iter().filter(|seen| **seen == path).count()
    };
    let tag = tag_of(&path);
    (
        [
            ("cache-control", "public, max-age=3600".to_owned()),
            ("date", httpdate::fmt_http_date(SystemTime::now())),
            ("surrogate-key", tag.clone()),
            ("cache-tag", tag),
        ],
        format!("{path} from the origin, fetch {count}"),
    )
        .into_response()
}

impl Edge {
    pub async fn start(flavor: Flavor) -> Edge {
        let origin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let origin_address = origin_listener.local_addr().expect("address");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let inner = Arc::new(Inner {
            flavor,
            origin: origin_address,
            client: reqwest::Client::new(),
            copies: Mutex::default(),
            lying: AtomicBool::new(false),
            settle: Mutex::new(Duration::ZERO),
            requests: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            delay: Mutex::new(Duration::ZERO),
            origin_requests: Mutex::default(),
        });
        let origin_app = axum::Router::new().fallback(origin).with_state(inner.clone());
        tokio::spawn(async move { axum::serve(origin_listener, origin_app).await.expect("serve") });
        let edge = Edge { address, inner };
        let app = axum::Router::new().fallback(serve).with_state(edge.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        edge
    }

    /// The URL of `path` through this edge.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Accepts every purge from now on and keeps serving the old copies.
    pub fn lie(&self) {
        self.inner.lying.store(true, Ordering::SeqCst);
    }

    /// Copies go this long after a purge is accepted, not at once.
    pub fn settle_after(&self, delay: Duration) {
        *self.inner.settle.lock().expect("settle") = delay;
    }

    /// Each answer takes this long.
    pub fn answer_after(&self, delay: Duration) {
        *self.inner.delay.lock().expect("delay") = delay;
    }

    /// Stores a copy of `path` as if fetched `age` ago.
    pub fn preload(&self, path: &str, age: Duration) {
        let then = SystemTime::now() - age;
        let tag = tag_of(path);
        self.inner.copies.lock().expect("copies").insert(
            path.to_owned(),
            Copy {
                body: Bytes::from(format!("{path}: the old copy")),
                stored_at: then,
                date: then,
                hits: 0,
                tags: vec![tag],
            },
        );
    }

    /// Whether a copy of `path` is stored.
    pub fn holds(&self, path: &str) -> bool {
        self.inner.copies.lock().expect("copies").contains_key(path)
    }

    /// The paths the origin was asked for, in order.
    pub fn origin_requests(&self) -> Vec<String> {
        self.inner.origin_requests.lock().expect("origin").clone()
    }

    /// Every request to the edge: when, the method, the path.
    pub fn requests(&self) -> Vec<(Instant, Method, String)> {
        self.inner.requests.lock().expect("requests").clone()
    }

    /// The most requests the edge was answering at once.
    pub fn most_in_flight(&self) -> usize {
        self.inner.most_in_flight.load(Ordering::SeqCst)
    }

    /// The path (and query) of `url` when it names this edge.
    fn path_of(&self, url: &str) -> Option<String> {
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        (authority == self.address.to_string()).then(|| {
            if path.is_empty() {
                "/".to_owned()
            } else {
                path.to_owned()
            }
        })
    }

    fn evict(&self, paths: Vec<String>, tags: &[String]) {
        if self.inner.lying.load(Ordering::SeqCst) {
            return;
        }
        let inner = self.inner.clone();
        let tags = tags.to_vec();
        let settle = *inner.settle.lock().expect("settle");
        let go = move || {
            inner
                .copies
                .lock()
                .expect("copies")
                .retain(|path, copy| !paths.contains(path) && !copy.tags.iter().any(|tag| tags.contains(tag)));
        };
        if settle.is_zero() {
            go();
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(settle).await;
                go();
            });
        }
    }

    async fn fetch_and_store(&self, path: &str) -> Result<Copy, String> {
        let response = self
            .inner
            .client
            .get(format!("http://{}{path}", self.inner.origin))
            .send()
            .await
            .map_err(|error| error.to_string())?;
        let tags = response
            .headers()
            .get("surrogate-key")
            .and_then(|value| value.to_str().ok())
            .map(|value| value.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let body = response.bytes().await.map_err(|error| error.to_string())?;
        let now = SystemTime::now();
        let copy = Copy {
            body,
            stored_at: now,
            date: now,
            hits: 0,
            tags,
        };
        self.inner
            .copies
            .lock()
            .expect("copies")
            .insert(path.to_owned(), copy.clone());
        Ok(copy)
    }
}

struct InFlight<'a>(&'a Inner);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(State(edge): State<Edge>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let inner = &edge.inner;
    let now_in_flight = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    inner.most_in_flight.fetch_max(now_in_flight, Ordering::SeqCst);
    let _in_flight = InFlight(inner);
    let path = uri.path_and_query().map_or("/", |path| path.as_str()).to_owned();
    inner
        .requests
        .lock()
        .expect("requests")
        .push((Instant::now(), method.clone(), path.clone()));
    let delay = *inner.delay.lock().expect("delay");
    tokio::time::sleep(delay).await;
    let stored = {
        let mut copies = inner.copies.lock().expect("copies");
        copies.get_mut(&path).map(|copy| {
            copy.hits += 1;
            copy.clone()
        })
    };
    let (hit, copy) = match stored {
        Some(copy) => (true, copy),
        None => match edge.fetch_and_store(&path).await {
            Ok(copy) => (false, copy),
            Err(error) => return (StatusCode::BAD_GATEWAY, error).into_response(),
        },
    };
    let now = SystemTime::now();
    let age = now
        .duration_since(copy.stored_at)
        .unwrap_or_default()
        .as_secs()
        .to_string();
    let mut answer: Vec<(&'static str, String)> = vec![
        ("date", httpdate::fmt_http_date(copy.date)),
        ("cache-control", "public, max-age=3600".into()),
    ];
    let pragma = headers
        .get("pragma")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match inner.flavor {
        Flavor::Akamai => {
            // X-Cache only for a request that asks with the Pragma header.
            if pragma.contains("akamai-x-cache-on") {
                let code = if hit { "TCP_MEM_HIT" } else { "TCP_MISS" };
                answer.push((
                    "x-cache",
                    format!("{code} from a23-45-67-89.deploy.akamaitechnologies.com (AkamaiGHost/22.1.0-5c2ab6bd) (-)"),
                ));
            }
            if pragma.contains("akamai-x-get-cache-key") {
                answer.push(("x-cache-key", format!("S/L/1234/567890/1d/{}{path}", edge.address)));
            }
        }
        Flavor::Cloudflare => {
            answer.push(("cf-cache-status", if hit { "HIT" } else { "MISS" }.into()));
            answer.push(("cf-ray", "8a1b2c3d4e5f6789-LHR".into()));
            if hit {
                answer.push(("age", age));
            }
        }
        Flavor::Fastly => {
            answer.push(("x-cache", if hit { "HIT" } else { "MISS" }.into()));
            answer.push(("x-cache-hits", if hit { copy.hits.to_string() } else { "0".into() }));
            answer.push(("x-served-by", "cache-lhr7380-LHR".into()));
            answer.push(("age", age));
        }
        Flavor::Alibaba => {
            let code = if hit { "HIT TCP_MEM_HIT" } else { "MISS TCP_MISS" };
            answer.push(("x-cache", format!("{code} dirn:-2:-2")));
            answer.push(("via", "cache13.l2cn1809[0,200-0,H], kunlun19.cn3157[0,0]".into()));
            let saved = copy
                .stored_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            answer.push(("ali-swift-global-savetime", saved.to_string()));
            answer.push(("age", age));
        }
    }
    let mut response = if method == Method::HEAD {
        StatusCode::OK.into_response()
    } else {
        copy.body.into_response()
    };
    for (name, value) in answer {
        response
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    response
}
