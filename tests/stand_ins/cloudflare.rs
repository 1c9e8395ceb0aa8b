//! A Cloudflare purge API stand-in: checks the bearer token, the zone, the
//! body's shape (exactly one of files, tags, hosts, prefixes or
//! purge_everything; at most 100 of them; prefixes without a scheme), keeps
//! the Pro plan's bucket (25, then 5 a second), answers `429` with
//! `Retry-After` past it (or to the first requests, when asked), and records
//! what it was asked. Shared through `#[path]`.
#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use edgecache::purge::TokenBucket;

pub const TOKEN: &str = "cf-stand-in-token-0123456789";
pub const ZONE: &str = "023e105f4ecef8ad9ca31a8372d0c353";

#[derive(Clone)]
pub struct StandIn {
    pub address: SocketAddr,
    bucket: Arc<TokenBucket>,
    /// Each accepted request's body, and when.
    pub accepted: Arc<Mutex<Vec<(SystemTime, serde_json::Value)>>>,
    pub throttled: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
    /// Limits or shapes the client broke.
    pub violations: Arc<Mutex<Vec<String>>>,
    /// This many first requests are answered `429`.
    pub throttle_first: Arc<AtomicUsize>,
}

fn answer(status: u16, body: serde_json::Value, retry_after: Option<&str>) -> Response {
    let mut response = (
        axum::http::StatusCode::from_u16(status).expect("status"),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", seconds.parse().expect("header"));
    }
    response
}

fn error(status: u16, code: u32, message: &str) -> Response {
    answer(
        status,
        serde_json::json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null}),
        (status == 429).then_some("1"),
    )
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|value| value.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

async fn purge(
    State(state): State<StandIn>,
    Path(zone): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&headers) {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return error(403, 10000, "Authentication error");
    }
    if zone != ZONE {
        return error(
            404,
            7003,
            "Could not route to /zones/…, perhaps your object identifier is invalid?",
        );
    }
    let violation = |why: String| {
        state.violations.lock().expect("violations").push(why.clone());
        error(400, 1001, &why)
    };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return violation("the body is not JSON".into());
    };
    let fields: Vec<&str> = body
        .as_object()
        .map(|object| object.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let known = ["files", "tags", "hosts", "prefixes", "purge_everything"];
    if fields.len() != 1 || !known.contains(&fields[0]) {
        return violation(format!("exactly one of {known:?}, not {fields:?}"));
    }
    if let Some(list) = body[fields[0]].as_array() {
        if list.is_empty() || list.len() > 100 {
            return violation(format!("{} {} in one request", list.len(), fields[0]));
        }
        if fields[0] == "prefixes"
            && list
                .iter()
                .any(|prefix| prefix.as_str().is_none_or(|p| p.contains("://")))
        {
            return violation("prefixes are written without a scheme".into());
        }
    }
    if state
        .throttle_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
        .is_ok()
        || state.bucket.try_take(1).is_err()
    {
        state.throttled.fetch_add(1, Ordering::SeqCst);
        return error(429, 10429, "rate limited");
    }
    state.accepted.lock().expect("accepted").push((SystemTime::now(), body));
    answer(
        200,
        serde_json::json!({"success": true, "errors": [], "messages": [], "result": {"id": uuid::Uuid::new_v4().simple().to_string()}}),
        None,
    )
}

async fn zone(Path(zone): Path<String>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return error(403, 10000, "Authentication error");
    }
    if zone != ZONE {
        return error(404, 7003, "Could not route");
    }
    answer(
        200,
        serde_json::json!({"success": true, "errors": [], "result": {"id": ZONE, "name": "example.com"}}),
        None,
    )
}

impl StandIn {
    /// A stand-in on a free port, with the Pro plan's bucket.
    pub async fn start() -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let state = StandIn {
            address: listener.local_addr().expect("address"),
            bucket: Arc::new(TokenBucket::new(25, 5.0)),
            accepted: Arc::default(),
            throttled: Arc::default(),
            refused: Arc::default(),
            violations: Arc::default(),
            throttle_first: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/client/v4/zones/{zone}/purge_cache", axum::routing::post(purge))
            .route("/client/v4/zones/{zone}", axum::routing::get(zone))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        state
    }

    pub fn api_base(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every value of `field` in the accepted requests, in order.
    pub fn asked(&self, field: &str) -> Vec<serde_json::Value> {
        self.accepted
            .lock()
            .expect("accepted")
            .iter()
            .filter_map(|(_, body)| body.get(field).cloned())
            .flat_map(|value| match value {
                serde_json::Value::Array(items) => items,
                other => vec![other],
            })
            .collect()
    }
}
