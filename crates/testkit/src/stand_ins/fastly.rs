//! A Fastly purge API stand-in: checks `Fastly-Key` and the service, takes
//! URL purges (`POST /purge/{host}/{path}`), batch key purges (at most 256
//! `surrogate_keys`) and `purge_all` (never soft), answers `429` with
//! `Retry-After` to the first requests when asked, and records each purge
//! and whether it was soft.
//!
//! The rules are Fastly's, from its API reference
//! (<https://www.fastly.com/documentation/reference/api/purging/>) and its
//! own clients (go-fastly's `purge.go`, fastly-rust's `purge_api.rs`), quoted
//! where each is enforced.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

pub const TOKEN: &str = "fastly-stand-in-token-0123456789";
pub const SERVICE: &str = "SU1Z0isxPaozGVKXdv0eY";

/// One purge the stand-in took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    /// `url`, `keys` or `all`.
    pub what: &'static str,
    /// The URL (without scheme) or the keys.
    pub objects: Vec<String>,
    pub soft: bool,
}

#[derive(Clone)]
pub struct StandIn {
    pub address: SocketAddr,
    pub purges: Arc<Mutex<Vec<Purge>>>,
    pub violations: Arc<Mutex<Vec<String>>>,
    pub throttled: Arc<AtomicUsize>,
    pub throttle_first: Arc<AtomicUsize>,
    /// Edges that evict what a purge names once it is accepted.
    pub edges: super::edge::Edges,
}

fn answer(status: u16, body: serde_json::Value) -> Response {
    let mut response = (
        axum::http::StatusCode::from_u16(status).expect("status"),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    if status == 429 {
        response
            .headers_mut()
            .insert("retry-after", "1".parse().expect("header"));
    }
    response
}

/// The checks every purge shares: `None` to go on, or the answer.
fn gate(state: &StandIn, headers: &HeaderMap) -> Option<Response> {
    if headers.get("fastly-key").and_then(|value| value.to_str().ok()) != Some(TOKEN) {
        return Some(answer(
            401,
            serde_json::json!({"msg": "Provided credentials are missing or invalid"}),
        ));
    }
    if state
        .throttle_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
        .is_ok()
    {
        state.throttled.fetch_add(1, Ordering::SeqCst);
        return Some(answer(429, serde_json::json!({"msg": "Too many requests"})));
    }
    None
}

fn soft(headers: &HeaderMap) -> bool {
    headers.get("fastly-soft-purge").is_some_and(|value| value == "1")
}

/// `POST /purge/{cached_url}`: the cached object is named by the call's
/// path and its own query string, as they arrive. go-fastly sends a URL's
/// query as the call's query (its PR #353: before it, "purges of URLs with a
/// query string purged nothing"); a `%3F` in the path names another object,
/// which Fastly purges, answering 200 all the same. So the object recorded
/// is the raw path with the raw query, never decoded.
async fn purge_url(State(state): State<StandIn>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    if let Some(refused) = gate(&state, &headers) {
        return refused;
    }
    let path = uri.path().strip_prefix("/purge/").unwrap_or_default();
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    state.edges.purged_urls(std::slice::from_ref(&target));
    state.purges.lock().expect("purges").push(Purge {
        what: "url",
        objects: vec![target],
        soft: soft(&headers),
    });
    answer(
        200,
        serde_json::json!({"status": "ok", "id": uuid::Uuid::new_v4().simple().to_string()}),
    )
}

async fn purge_keys(
    State(state): State<StandIn>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = gate(&state, &headers) {
        return refused;
    }
    if service != SERVICE {
        return answer(
            404,
            serde_json::json!({"msg": "Record not found", "detail": "Cannot find service"}),
        );
    }
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let keys: Vec<String> = body["surrogate_keys"]
        .as_array()
        .map(|keys| keys.iter().filter_map(|key| key.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    // "Up to 256 surrogate keys can be purged in one batch request"; a key
    // is at most 1,024 bytes ("Surrogate keys ... each key is limited to
    // 1024 bytes", Fastly's surrogate-key docs).
    if let Some(long) = keys.iter().find(|key| key.len() > 1024) {
        state
            .violations
            .lock()
            .expect("violations")
            .push(format!("a key of {} bytes", long.len()));
        return answer(
            400,
            serde_json::json!({"msg": "Bad request", "detail": "surrogate keys are at most 1024 bytes"}),
        );
    }
    if keys.is_empty() || keys.len() > 256 {
        state
            .violations
            .lock()
            .expect("violations")
            .push(format!("{} keys in one batch", keys.len()));
        return answer(
            400,
            serde_json::json!({"msg": "Bad request", "detail": "1 to 256 surrogate keys"}),
        );
    }
    let ids: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|key| {
            (
                key.clone(),
                serde_json::json!(uuid::Uuid::new_v4().simple().to_string()),
            )
        })
        .collect();
    state.edges.purged_tags(&keys);
    state.purges.lock().expect("purges").push(Purge {
        what: "keys",
        objects: keys,
        soft: soft(&headers),
    });
    answer(200, serde_json::Value::Object(ids))
}

async fn purge_all(State(state): State<StandIn>, Path(service): Path<String>, headers: HeaderMap) -> Response {
    if let Some(refused) = gate(&state, &headers) {
        return refused;
    }
    if service != SERVICE {
        return answer(404, serde_json::json!({"msg": "Record not found"}));
    }
    if soft(&headers) {
        state
            .violations
            .lock()
            .expect("violations")
            .push("a soft purge_all".into());
        return answer(400, serde_json::json!({"msg": "purge_all cannot be soft"}));
    }
    state.purges.lock().expect("purges").push(Purge {
        what: "all",
        objects: Vec::new(),
        soft: false,
    });
    answer(200, serde_json::json!({"status": "ok"}))
}

async fn service(State(state): State<StandIn>, Path(service): Path<String>, headers: HeaderMap) -> Response {
    if let Some(refused) = gate(&state, &headers) {
        return refused;
    }
    if service != SERVICE {
        return answer(404, serde_json::json!({"msg": "Record not found"}));
    }
    answer(200, serde_json::json!({"id": SERVICE, "name": "www"}))
}

impl StandIn {
    pub async fn start() -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let state = StandIn {
            address: listener.local_addr().expect("address"),
            purges: Arc::default(),
            violations: Arc::default(),
            throttled: Arc::default(),
            throttle_first: Arc::default(),
            edges: super::edge::Edges::default(),
        };
        let app = axum::Router::new()
            .route("/purge/{*target}", axum::routing::post(purge_url))
            .route("/service/{service}/purge", axum::routing::post(purge_keys))
            .route("/service/{service}/purge_all", axum::routing::post(purge_all))
            .route("/service/{service}", axum::routing::get(service))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        state
    }

    pub fn api_base(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn purges(&self) -> Vec<Purge> {
        self.purges.lock().expect("purges").clone()
    }
}
