//! An Alibaba Cloud CDN stand-in that verifies the ACS3-HMAC-SHA256
//! signature of every request (with its own canonicalization, not the
//! crate's), rejects replayed nonces, enforces the per-call limits and the
//! call rates, keeps a quota, runs tasks that move from Refreshing to
//! Complete (or Failed) after a delay, and answers some calls with
//! `Throttling`.
//!
//! The rules are Alibaba Cloud's, from the CDN API reference (API version
//! 2018-05-10), each quoted where it is enforced.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::Response;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const KEY_ID: &str = "LTAI5tStandInKey";
pub const SECRET: &str = "stand-in-secret-0123456789";

#[derive(Clone)]
pub struct Config {
    /// How long a task stays Refreshing.
    pub task_delay: Duration,
    /// Every Nth call is answered `503 Throttling` (0: never).
    pub throttle_every: usize,
    /// How long a refresh or prefetch call takes to answer (it is carried
    /// out on arrival).
    pub submit_delay: Duration,
    pub url_remain: u64,
    pub preload_remain: u64,
    /// An STS token every request must carry.
    pub token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            task_delay: Duration::from_millis(300),
            throttle_every: 0,
            submit_delay: Duration::ZERO,
            url_remain: 10_000,
            preload_remain: 10_000,
            token: None,
        }
    }
}

pub struct Entry {
    pub path: String,
    pub object_type: &'static str,
    pub created: Instant,
    pub fails: bool,
}

#[derive(Default)]
pub struct Seen {
    pub calls: usize,
    pub actions: Vec<String>,
    pub bad_signatures: Vec<String>,
    pub nonces: HashSet<String>,
    pub limit_violations: Vec<String>,
    pub rate_violations: usize,
    pub throttled: usize,
    pub recent_submits: VecDeque<Instant>,
    pub busiest_second: usize,
    /// Recent calls of the task queries, by action, for their rates.
    pub recent_queries: HashMap<String, VecDeque<Instant>>,
    /// Task queries the API would have refused, and why.
    pub refused_queries: Vec<String>,
    /// Each path sent in an accepted refresh or prefetch, and how often.
    pub submitted: HashMap<String, usize>,
    pub accepted_calls: usize,
    /// When each call was accepted, and its object type.
    pub accepted_at: Vec<(std::time::SystemTime, &'static str)>,
    pub next_task: u64,
    pub tasks: HashMap<String, Vec<Entry>>,
    pub url_remain: u64,
    pub preload_remain: u64,
    pub prefetch_parameters: Vec<HashMap<String, String>>,
    /// The parameters of each accepted refresh.
    pub refresh_parameters: Vec<HashMap<String, String>>,
}

#[derive(Clone)]
pub struct StandIn {
    pub config: Config,
    pub seen: Arc<Mutex<Seen>>,
    /// Edges that evict what a refresh names, and fetch what a prefetch names.
    pub edges: super::edge::Edges,
}

impl StandIn {
    pub async fn start(config: Config) -> (StandIn, SocketAddr) {
        let seen = Seen {
            url_remain: config.url_remain,
            preload_remain: config.preload_remain,
            next_task: 17_000_000_000,
            ..Seen::default()
        };
        let stand_in = StandIn {
            config,
            seen: Arc::new(Mutex::new(seen)),
            edges: super::edge::Edges::default(),
        };
        let app = axum::Router::new().fallback(api).with_state(stand_in.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        (stand_in, address)
    }

    pub fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("lock")
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// RFC 3986 encoding, written out here so a mistake in the crate's cannot hide.
pub fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Checks a request's ACS3-HMAC-SHA256 signature from first principles.
pub fn verify(config: &Config, parts: &http::request::Parts, body: &[u8]) -> Result<String, String> {
    let header = |name: &str| parts.headers.get(name).and_then(|value| value.to_str().ok());
    let authorization = header("authorization").ok_or("no Authorization")?;
    let fields = authorization
        .strip_prefix("ACS3-HMAC-SHA256 ")
        .ok_or("not ACS3-HMAC-SHA256")?;
    let field = |name: &str| {
        fields
            .split(',')
            .find_map(|part| part.trim().strip_prefix(name))
            .ok_or(format!("no {name}"))
    };
    if field("Credential=")? != KEY_ID {
        return Err("unknown AccessKey id".into());
    }
    let signed: Vec<&str> = field("SignedHeaders=")?.split(';').collect();
    let mut required = vec![
        "host",
        "x-acs-action",
        "x-acs-content-sha256",
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-version",
    ];
    if parts.headers.contains_key("content-type") {
        required.push("content-type");
    }
    for name in parts.headers.keys() {
        if name.as_str().starts_with("x-acs-") {
            required.push(name.as_str());
        }
    }
    if let Some(missing) = required.iter().find(|name| !signed.contains(name)) {
        return Err(format!("{missing} is not signed"));
    }
    if header("x-acs-content-sha256") != Some(&hex(&Sha256::digest(body))) {
        return Err("x-acs-content-sha256 is not the body's hash".into());
    }
    if header("x-acs-version") != Some("2018-05-10") {
        return Err("wrong API version".into());
    }
    if header("x-acs-security-token") != config.token.as_deref() {
        return Err("wrong or missing security token".into());
    }
    let date = header("x-acs-date").ok_or("no date")?;
    if date.len() != 20 || !date.ends_with('Z') {
        return Err(format!("date {date:?} is not ISO 8601 UTC"));
    }
    let mut query: Vec<(String, String)> = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .map(|(name, value)| (encode(&name), encode(&value)))
        .collect();
    query.sort();
    let query: Vec<String> = query.iter().map(|(name, value)| format!("{name}={value}")).collect();
    let mut canonical_headers = String::new();
    for name in &signed {
        let value = header(name).ok_or(format!("signed header {name} is absent"))?;
        canonical_headers.push_str(&format!("{name}:{}\n", value.trim()));
    }
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{}\n{}",
        parts.method,
        parts.uri.path(),
        query.join("&"),
        signed.join(";"),
        hex(&Sha256::digest(body))
    );
    let string_to_sign = format!("ACS3-HMAC-SHA256\n{}", hex(&Sha256::digest(canonical.as_bytes())));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(string_to_sign.as_bytes());
    if field("Signature=")? != hex(&mac.finalize().into_bytes()) {
        return Err("signature does not match".into());
    }
    Ok(header("x-acs-signature-nonce").unwrap_or_default().to_owned())
}

pub fn answer(status: u16, body: serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .expect("response")
}

pub fn refuse(status: u16, code: &str, message: &str) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    answer(
        status,
        serde_json::json!({ "RequestId": request_id, "HostId": "cdn.aliyuncs.com", "Code": code, "Message": message }),
    )
}

pub fn host(path: &str) -> &str {
    path.split_once("://")
        .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""))
}

pub async fn api(State(stand_in): State<StandIn>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    let config = &stand_in.config;
    let nonce = match verify(config, &parts, &body) {
        Ok(nonce) => nonce,
        Err(reason) => {
            stand_in.seen().bad_signatures.push(reason.clone());
            return refuse(400, "SignatureDoesNotMatch", &reason);
        }
    };
    let action = parts
        .headers
        .get("x-acs-action")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut parameters: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    parameters.extend(url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned());
    let is_submit = action == "RefreshObjectCaches" || action == "PushObjectCache";
    {
        let mut seen = stand_in.seen();
        if !seen.nonces.insert(nonce) {
            return refuse(400, "SignatureNonceUsed", "Specified signature nonce was used already.");
        }
        seen.calls += 1;
        seen.actions.push(action.clone());
        // DescribeRefreshTasks: "A single user can make up to 5 calls per
        // second." DescribeRefreshTaskById: "Each user can make up to 30
        // calls per second." (Alibaba Cloud CDN API reference.)
        let query_rate = match action.as_str() {
            "DescribeRefreshTasks" => Some(5),
            "DescribeRefreshTaskById" => Some(30),
            _ => None,
        };
        if let Some(most) = query_rate {
            let now = Instant::now();
            let recent = seen.recent_queries.entry(action.clone()).or_default();
            while recent.front().is_some_and(|at| now - *at > Duration::from_secs(1)) {
                recent.pop_front();
            }
            recent.push_back(now);
            if recent.len() > most {
                seen.refused_queries
                    .push(format!("{action}: more than {most} calls in a second"));
                return refuse(503, "Throttling", "Request was denied due to request throttling.");
            }
        }
        if config.throttle_every > 0 && seen.calls.is_multiple_of(config.throttle_every) {
            seen.throttled += 1;
            return refuse(503, "Throttling", "Request was denied due to request throttling.");
        }
        if is_submit {
            let now = Instant::now();
            while seen
                .recent_submits
                .front()
                .is_some_and(|at| now - *at > Duration::from_secs(1))
            {
                seen.recent_submits.pop_front();
            }
            seen.recent_submits.push_back(now);
            seen.busiest_second = seen.busiest_second.max(seen.recent_submits.len());
            if seen.recent_submits.len() > 50 {
                seen.rate_violations += 1;
                return refuse(503, "Throttling", "More than 50 calls in a second.");
            }
        }
    }
    match action.as_str() {
        "DescribeRefreshQuota" => {
            let seen = stand_in.seen();
            answer(
                200,
                serde_json::json!({
                    "RequestId": "quota-request", "UrlQuota": "10000", "UrlRemain": seen.url_remain.to_string(),
                    "DirQuota": "100", "DirRemain": "100", "RegexQuota": "20", "RegexRemain": "20",
                    "PreloadQuota": "10000", "PreloadRemain": seen.preload_remain.to_string(),
                    "IgnoreParamsQuota": "10000", "IgnoreParamsRemain": "10000", "BlockQuota": "100", "BlockRemain": "100"
                }),
            )
        }
        "RefreshObjectCaches" | "PushObjectCache" => {
            let response = submit(&stand_in, &action, &parameters);
            // The task exists from the moment the call arrives; only the
            // answer is slow, so a caller that dies waiting has still refreshed.
            tokio::time::sleep(stand_in.config.submit_delay).await;
            response
        }
        "DescribeRefreshTasks" => describe(&stand_in, &parameters),
        "DescribeRefreshTaskById" => describe_by_id(&stand_in, &parameters),
        other => refuse(400, "InvalidAction.NotFound", &format!("no action {other}")),
    }
}

pub fn submit(stand_in: &StandIn, action: &str, parameters: &HashMap<String, String>) -> Response {
    let paths: Vec<String> = parameters
        .get("ObjectPath")
        .map(|paths| paths.split('\n').map(str::to_owned).collect())
        .unwrap_or_default();
    let refresh = action == "RefreshObjectCaches";
    let object_type = match (refresh, parameters.get("ObjectType").map(String::as_str)) {
        (false, _) => "preload",
        (true, None | Some("File")) => "file",
        (true, Some("Directory")) => "directory",
        (true, Some("Regex")) => "regex",
        (true, Some("IgnoreParams")) => "ignoreParams",
        (true, Some(other)) => return refuse(400, "InvalidObjectType.Malformed", other),
    };
    let limit = match object_type {
        "directory" | "preload" => 100,
        "regex" => 1,
        _ => 1000,
    };
    let domains: HashSet<&str> = paths.iter().map(|path| host(path)).collect();
    let mut violation = None;
    if paths.len() > limit {
        violation = Some(format!("{} paths in one {object_type} call", paths.len()));
    } else if domains.len() > 10 {
        violation = Some(format!("{} domains in one call", domains.len()));
    }
    if let Some(violation) = violation {
        stand_in.seen().limit_violations.push(violation.clone());
        return refuse(400, "SingleRequest.OverLimit", &violation);
    }
    for path in &paths {
        if !(path.starts_with("http://") || path.starts_with("https://")) || path.contains(' ') {
            return refuse(400, "InvalidObjectPath.Malformed", &format!("{path:?}"));
        }
        if object_type == "directory" && !path.ends_with('/') {
            return refuse(400, "InvalidObjectPath.Malformed", "a directory must end with /");
        }
        if host(path) == "unknown.example.com" {
            return refuse(400, "InvalidDomain.NotFound", "The domain does not exist.");
        }
    }
    let mut seen = stand_in.seen();
    let remain = if refresh {
        &mut seen.url_remain
    } else {
        &mut seen.preload_remain
    };
    if (paths.len() as u64) > *remain {
        return refuse(400, "QuotaExceeded.Refresh", "Your refresh quota is used up.");
    }
    *remain -= paths.len() as u64;
    if refresh {
        seen.refresh_parameters.push(parameters.clone());
    } else {
        seen.prefetch_parameters.push(parameters.clone());
    }
    seen.accepted_calls += 1;
    seen.accepted_at.push((std::time::SystemTime::now(), object_type));
    // One task per domain, as the API's comma-separated task ids allow.
    let mut ids = Vec::new();
    let mut task_of: HashMap<&str, String> = HashMap::new();
    for path in &paths {
        let id = task_of
            .entry(host(path))
            .or_insert_with(|| {
                seen.next_task += 1;
                let id = seen.next_task.to_string();
                ids.push(id.clone());
                id
            })
            .clone();
        *seen.submitted.entry(path.clone()).or_default() += 1;
        seen.tasks.entry(id).or_default().push(Entry {
            path: path.clone(),
            object_type,
            created: Instant::now(),
            fails: path.contains("/broken/"),
        });
    }
    drop(seen);
    // A task on a `/broken/` path fails: its edge copies stay.
    let working: Vec<&String> = paths.iter().filter(|path| !path.contains("/broken/")).collect();
    match object_type {
        "file" => stand_in.edges.purged_urls(&working),
        "preload" => stand_in.edges.prefetch(&working),
        _ => {}
    }
    let field = if refresh { "RefreshTaskId" } else { "PushTaskId" };
    answer(
        200,
        serde_json::json!({ field: ids.join(","), "RequestId": uuid::Uuid::new_v4().to_string() }),
    )
}

pub fn describe(stand_in: &StandIn, parameters: &HashMap<String, String>) -> Response {
    let number = |name: &str, default: usize| parameters.get(name).map_or(Some(default), |value| value.parse().ok());
    let (Some(page), Some(size)) = (number("PageNumber", 1), number("PageSize", 20)) else {
        return refuse(400, "InvalidParameter", "PageNumber and PageSize are numbers");
    };
    if size == 0 || size > 100 || page == 0 {
        stand_in.seen().limit_violations.push(format!("PageSize {size}"));
        return refuse(400, "InvalidPageSize.ValueNotSupported", "PageSize is 1 to 100");
    }
    // "ObjectType: ... If you set the DomainName or Status parameter, you
    // must also set the ObjectType parameter." Error 400
    // MissingParameter.ObjectType (DescribeRefreshTasks, Alibaba Cloud CDN
    // API reference).
    if (parameters.contains_key("DomainName") || parameters.contains_key("Status"))
        && !parameters.contains_key("ObjectType")
    {
        stand_in
            .seen()
            .refused_queries
            .push("DescribeRefreshTasks: Status or DomainName without ObjectType".into());
        return refuse(
            400,
            "MissingParameter.ObjectType",
            "The ObjectType parameter is required if DomainName or TaskStatus is specified.",
        );
    }
    let seen = stand_in.seen();
    let mut tasks: Vec<serde_json::Value> = Vec::new();
    let mut ids: Vec<&String> = seen.tasks.keys().collect();
    ids.sort();
    for id in ids {
        if parameters.get("TaskId").is_some_and(|wanted| wanted != id) {
            continue;
        }
        for entry in &seen.tasks[id] {
            let task = entry_json(id, entry, stand_in.config.task_delay);
            if parameters
                .get("Status")
                .is_some_and(|wanted| task["Status"] != **wanted)
                || parameters.get("ObjectPath").is_some_and(|wanted| *wanted != entry.path)
                || parameters
                    .get("ObjectType")
                    .is_some_and(|wanted| wanted != entry.object_type)
            {
                continue;
            }
            tasks.push(task);
        }
    }
    let total = tasks.len();
    let page_tasks: Vec<_> = tasks.into_iter().skip((page - 1) * size).take(size).collect();
    answer(
        200,
        serde_json::json!({
            "RequestId": uuid::Uuid::new_v4().to_string(), "PageNumber": page, "PageSize": size,
            "TotalCount": total, "Tasks": { "CDNTask": page_tasks }
        }),
    )
}

/// One task entry as the API shows it, its state from its age.
fn entry_json(id: &str, entry: &Entry, delay: Duration) -> serde_json::Value {
    let status = match (entry.created.elapsed() >= delay, entry.fails) {
        (false, _) => "Refreshing",
        (true, false) => "Complete",
        (true, true) => "Failed",
    };
    serde_json::json!({
        "TaskId": id, "ObjectPath": entry.path, "ObjectType": entry.object_type, "Status": status,
        "Process": if status == "Refreshing" { "50%" } else { "100%" },
        "CreationTime": "2026-11-22T10:00:00Z",
        "Description": if status == "Failed" { "origin answered 502" } else { "" },
    })
}

/// `DescribeRefreshTaskById`: "TaskId (required): ... You can specify up to
/// 10 task IDs. Separate multiple task IDs with commas (,)." The answer's
/// `Tasks` is a plain array (the API reference's example and its SDKs).
pub fn describe_by_id(stand_in: &StandIn, parameters: &HashMap<String, String>) -> Response {
    let ids: Vec<&str> = parameters
        .get("TaskId")
        .map(|ids| ids.split(',').collect())
        .unwrap_or_default();
    if ids.is_empty() || ids.len() > 10 || ids.iter().any(|id| id.is_empty()) {
        let why = format!("DescribeRefreshTaskById: {} task ids", ids.len());
        stand_in.seen().refused_queries.push(why.clone());
        return refuse(
            400,
            "InvalidTaskId.Malformed",
            &format!("The specified TaskId is invalid: {why}"),
        );
    }
    let seen = stand_in.seen();
    let tasks: Vec<serde_json::Value> = ids
        .iter()
        .filter_map(|id| seen.tasks.get(*id).map(|entries| (id, entries)))
        .flat_map(|(id, entries)| {
            entries
                .iter()
                .map(|entry| entry_json(id, entry, stand_in.config.task_delay))
        })
        .collect();
    answer(
        200,
        serde_json::json!({
            "RequestId": uuid::Uuid::new_v4().to_string(), "TotalCount": tasks.len(), "Tasks": tasks
        }),
    )
}

pub fn credentials_env() -> [(&'static str, &'static str); 2] {
    [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET),
    ]
}
