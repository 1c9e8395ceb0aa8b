//! A Cloudflare purge API stand-in: checks the bearer token, the zone, the
//! body's shape, keeps a plan's two rate limits, answers `429` with
//! `Retry-After` past them (or to the first requests, when asked), and
//! records what it was asked.
//!
//! The rules are Cloudflare's own, quoted where each is enforced, from
//! <https://developers.cloudflare.com/cache/how-to/purge-cache/> ("Availability
//! and limits"), its purge-by-prefix page, and the API reference of
//! `POST /zones/{zone_id}/purge_cache`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use edgecache_purge::TokenBucket;

pub const TOKEN: &str = "cf-stand-in-token-0123456789";
pub const ZONE: &str = "023e105f4ecef8ad9ca31a8372d0c353";

/// A plan's limits, as Cloudflare's "Availability and limits" table gives
/// them: "Single-file purge ... URLs per second": Free 800, Pro 1,500,
/// Business 1,500, Enterprise 3,000; "Hostname, tag, prefix, and purge
/// everything ... requests": Free 5 per minute (bucket 25), Pro 5 per second
/// (25), Business 10 per second (50), Enterprise 50 per second (500).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub urls_per_second: u32,
    pub request_bucket: u32,
    pub requests_per_second: f64,
    /// "up to 100 URLs per API call (500 on Enterprise)".
    pub urls_per_request: usize,
}

impl Limits {
    pub const FREE: Limits = Limits {
        urls_per_second: 800,
        request_bucket: 25,
        requests_per_second: 5.0 / 60.0,
        urls_per_request: 100,
    };
    pub const PRO: Limits = Limits {
        urls_per_second: 1_500,
        request_bucket: 25,
        requests_per_second: 5.0,
        urls_per_request: 100,
    };
}

#[derive(Clone)]
pub struct StandIn {
    pub address: SocketAddr,
    limits: Limits,
    /// Hostname, tag, prefix and purge-everything requests.
    bucket: Arc<TokenBucket>,
    /// Single-file purge: URLs, refilled each second (a moving average).
    urls: Arc<TokenBucket>,
    /// Each accepted request's body, and when.
    pub accepted: Arc<Mutex<Vec<(SystemTime, serde_json::Value)>>>,
    pub throttled: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
    /// Limits or shapes the client broke.
    pub violations: Arc<Mutex<Vec<String>>>,
    /// This many first requests are answered `429`.
    pub throttle_first: Arc<AtomicUsize>,
    /// Edges that evict what a purge names once it is accepted.
    pub edges: super::edge::Edges,
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
    let field = fields[0];
    let list = body[field].as_array().cloned().unwrap_or_default();
    if field != "purge_everything" {
        // "up to 100 operations a request"; URLs: "500 on Enterprise";
        // purge by prefix: "Purge requests are limited to 30 prefixes per request."
        let most = match field {
            "files" => state.limits.urls_per_request,
            "prefixes" => 30,
            _ => 100,
        };
        if list.is_empty() || list.len() > most {
            return violation(format!("{} {field} in one request", list.len()));
        }
        let texts: Vec<&str> = list.iter().filter_map(|item| item.as_str()).collect();
        if texts.len() != list.len() {
            return violation(format!("{field} are strings"));
        }
        // Prefixes are written without their scheme ("www.example.com/foo/"),
        // and "URI query strings & fragments cannot purge by prefix";
        // "Path separators are limited to 31 for a prefix".
        if field == "prefixes"
            && let Some(bad) = texts.iter().find(|prefix| {
                prefix.contains("://") || prefix.contains(['?', '#']) || prefix.matches('/').count() > 31
            })
        {
            return violation(format!("prefix {bad:?}: no scheme, query or fragment, at most 31 `/`"));
        }
        // Hosts are host names: "hosts": ["www.example.com", "images.example.com"].
        if field == "hosts"
            && let Some(bad) = texts.iter().find(|host| host.contains(['/', ':', '?']))
        {
            return violation(format!("host {bad:?} is not a host name"));
        }
    }
    // A single-file purge spends URLs, every other purge one request.
    let spent = if field == "files" {
        state.urls.try_take(list.len() as u32)
    } else {
        state.bucket.try_take(1)
    };
    if state
        .throttle_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
        .is_ok()
        || spent.is_err()
    {
        state.throttled.fetch_add(1, Ordering::SeqCst);
        return error(429, 10429, "rate limited");
    }
    // "files" may be URLs, or objects with a "url" and the headers of a variant.
    let named: Vec<&str> = list
        .iter()
        .filter_map(|item| item.as_str().or_else(|| item.get("url").and_then(|url| url.as_str())))
        .collect();
    match field {
        "files" => state.edges.purged_urls(&named),
        "tags" => state.edges.purged_tags(&named),
        _ => {}
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
    /// A stand-in on a free port, with the Pro plan's limits.
    pub async fn start() -> StandIn {
        Self::start_with(Limits::PRO).await
    }

    /// A stand-in on a free port, with these limits.
    pub async fn start_with(limits: Limits) -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let state = StandIn {
            address: listener.local_addr().expect("address"),
            limits,
            bucket: Arc::new(TokenBucket::new(limits.request_bucket, limits.requests_per_second)),
            urls: Arc::new(TokenBucket::new(
                limits.urls_per_second,
                f64::from(limits.urls_per_second),
            )),
            accepted: Arc::default(),
            throttled: Arc::default(),
            refused: Arc::default(),
            violations: Arc::default(),
            throttle_first: Arc::default(),
            edges: super::edge::Edges::default(),
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
