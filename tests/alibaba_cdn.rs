//! Alibaba Cloud CDN refresh and prefetch against a local stand-in that
//! verifies the ACS3-HMAC-SHA256 signature of every request (with its own
//! canonicalization, not the crate's), rejects replayed nonces, enforces the
//! per-call limits and the call rate, keeps a quota, runs tasks that move
//! from Refreshing to Complete (or Failed) after a delay, and answers some
//! calls with `Throttling`.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::Response;
use edgecache::purge::Backoff;
use edgecache::purge::alibaba::{
    AlibabaCdnClient, AlibabaError, Area, BatchError, Credentials, ObjectType, Operation, Outcome, PrefetchOptions,
    RateLimits, TaskFilter,
};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const KEY_ID: &str = "LTAI5tStandInKey";
const SECRET: &str = "stand-in-secret-0123456789";

#[derive(Clone)]
struct Config {
    /// How long a task stays Refreshing.
    task_delay: Duration,
    /// Every Nth call is answered `503 Throttling` (0: never).
    throttle_every: usize,
    /// How long a refresh or prefetch call takes.
    submit_delay: Duration,
    url_remain: u64,
    preload_remain: u64,
    /// An STS token every request must carry.
    token: Option<String>,
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

struct Entry {
    path: String,
    object_type: &'static str,
    created: Instant,
    fails: bool,
}

#[derive(Default)]
struct Seen {
    calls: usize,
    actions: Vec<String>,
    bad_signatures: Vec<String>,
    nonces: HashSet<String>,
    limit_violations: Vec<String>,
    rate_violations: usize,
    throttled: usize,
    recent_submits: VecDeque<Instant>,
    busiest_second: usize,
    /// Each path sent in an accepted refresh or prefetch, and how often.
    submitted: HashMap<String, usize>,
    accepted_calls: usize,
    next_task: u64,
    tasks: HashMap<String, Vec<Entry>>,
    url_remain: u64,
    preload_remain: u64,
    prefetch_parameters: Vec<HashMap<String, String>>,
}

#[derive(Clone)]
struct StandIn {
    config: Config,
    seen: Arc<Mutex<Seen>>,
}

impl StandIn {
    async fn start(config: Config) -> (StandIn, SocketAddr) {
        let seen = Seen {
            url_remain: config.url_remain,
            preload_remain: config.preload_remain,
            next_task: 17_000_000_000,
            ..Seen::default()
        };
        let stand_in = StandIn {
            config,
            seen: Arc::new(Mutex::new(seen)),
        };
        let app = axum::Router::new().fallback(api).with_state(stand_in.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        (stand_in, address)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("lock")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// RFC 3986 encoding, written out here so a mistake in the crate's cannot hide.
fn encode(text: &str) -> String {
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
fn verify(config: &Config, parts: &http::request::Parts, body: &[u8]) -> Result<String, String> {
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

fn answer(status: u16, body: serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .expect("response")
}

fn refuse(status: u16, code: &str, message: &str) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    answer(
        status,
        serde_json::json!({ "RequestId": request_id, "HostId": "cdn.aliyuncs.com", "Code": code, "Message": message }),
    )
}

fn host(path: &str) -> &str {
    path.split_once("://")
        .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""))
}

async fn api(State(stand_in): State<StandIn>, request: Request) -> Response {
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
        "RefreshObjectCaches" | "PushObjectCache" => submit(&stand_in, &action, &parameters).await,
        "DescribeRefreshTasks" => describe(&stand_in, &parameters),
        other => refuse(400, "InvalidAction.NotFound", &format!("no action {other}")),
    }
}

async fn submit(stand_in: &StandIn, action: &str, parameters: &HashMap<String, String>) -> Response {
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
    tokio::time::sleep(stand_in.config.submit_delay).await;
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
    if !refresh {
        seen.prefetch_parameters.push(parameters.clone());
    }
    seen.accepted_calls += 1;
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
    let field = if refresh { "RefreshTaskId" } else { "PushTaskId" };
    answer(
        200,
        serde_json::json!({ field: ids.join(","), "RequestId": uuid::Uuid::new_v4().to_string() }),
    )
}

fn describe(stand_in: &StandIn, parameters: &HashMap<String, String>) -> Response {
    let number = |name: &str, default: usize| parameters.get(name).map_or(Some(default), |value| value.parse().ok());
    let (Some(page), Some(size)) = (number("PageNumber", 1), number("PageSize", 20)) else {
        return refuse(400, "InvalidParameter", "PageNumber and PageSize are numbers");
    };
    if size == 0 || size > 100 || page == 0 {
        stand_in.seen().limit_violations.push(format!("PageSize {size}"));
        return refuse(400, "InvalidPageSize.ValueNotSupported", "PageSize is 1 to 100");
    }
    let seen = stand_in.seen();
    let delay = stand_in.config.task_delay;
    let mut tasks: Vec<serde_json::Value> = Vec::new();
    let mut ids: Vec<&String> = seen.tasks.keys().collect();
    ids.sort();
    for id in ids {
        if parameters.get("TaskId").is_some_and(|wanted| wanted != id) {
            continue;
        }
        for entry in &seen.tasks[id] {
            let status = match (entry.created.elapsed() >= delay, entry.fails) {
                (false, _) => "Refreshing",
                (true, false) => "Complete",
                (true, true) => "Failed",
            };
            if parameters.get("Status").is_some_and(|wanted| wanted != status)
                || parameters.get("ObjectPath").is_some_and(|wanted| *wanted != entry.path)
            {
                continue;
            }
            tasks.push(serde_json::json!({
                "TaskId": id, "ObjectPath": entry.path, "ObjectType": entry.object_type, "Status": status,
                "Process": if status == "Refreshing" { "50%" } else { "100%" },
                "CreationTime": "2026-11-22T10:00:00Z",
                "Description": if status == "Failed" { "origin answered 502" } else { "" },
            }));
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

fn credentials_env() -> [(&'static str, &'static str); 2] {
    [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET),
    ]
}

/// Five thousand URLs over three domains: every 250th fails at the CDN, some
/// have spaces or non-ASCII characters, a few are repeated.
fn five_thousand_urls() -> Vec<String> {
    (0..5000)
        .map(|n| match n {
            n if n % 250 == 7 => format!("https://d{}.example.com/broken/{n}.js", n % 3),
            n if n % 500 == 1 => format!("https://d{}.example.com/file name {n}.js", n % 3),
            n if n % 500 == 2 => format!("https://d{}.example.com/café/{n}.js", n % 3),
            n => format!("https://d{}.example.com/assets/{n}.js", n % 3),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn five_thousand_urls_are_refreshed_and_every_outcome_is_reported() {
    let (stand_in, address) = StandIn::start(Config {
        throttle_every: 7,
        ..Config::default()
    })
    .await;
    let directory = tempfile::tempdir().expect("tempdir");
    let list = directory.path().join("urls.txt");
    let mut urls = five_thousand_urls();
    urls.extend([
        "https://d0.example.com/assets/9.js".to_owned(),
        String::new(),
        "# done".into(),
    ]);
    std::fs::write(&list, urls.join("\n")).expect("write");

    let started = Instant::now();
    let run = common::edgecache_with_env(
        [
            "purge",
            "alibaba",
            "refresh",
            "-r",
            list.to_str().expect("utf-8"),
            "--endpoint",
            &format!("http://{address}"),
            "--json",
        ],
        &credentials_env(),
    )
    .await;
    let elapsed = started.elapsed();
    eprintln!("5,000 URLs refreshed and confirmed in {elapsed:?}");
    assert!(!run.success, "20 URLs failed at the CDN, so the run fails");
    let results: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON results");
    let results = results.as_array().expect("a list of results");
    assert_eq!(results.len(), 5000, "every distinct URL is reported once");
    for field in ["object", "status", "detail", "origin", "id"] {
        assert!(results[0].get(field).is_some(), "{field} in {}", results[0]);
    }
    assert!(
        run.stderr.contains("duplicates           1 (skipped)"),
        "the summary is on stderr: {}",
        run.stderr
    );

    let seen = stand_in.seen();
    assert!(seen.bad_signatures.is_empty(), "{:?}", seen.bad_signatures);
    assert!(seen.limit_violations.is_empty(), "{:?}", seen.limit_violations);
    assert_eq!(seen.rate_violations, 0);
    assert!(seen.throttled > 0, "the run met Throttling and got past it");
    assert_eq!(seen.submitted.len(), 5000);
    assert!(
        seen.submitted.values().all(|&count| count == 1),
        "nothing is sent twice"
    );
    assert!(seen.submitted.contains_key("https://d1.example.com/file%20name%201.js"));
    assert!(seen.submitted.contains_key("https://d2.example.com/caf%C3%A9/2.js"));
    assert!(
        seen.submitted.keys().all(|path| !path.contains("%25")),
        "no double encoding"
    );
    assert!(seen.accepted_calls <= 8, "{} calls for 5,000 URLs", seen.accepted_calls);

    let mut failed = HashSet::new();
    for result in results {
        let path = result["object"].as_str().expect("object");
        assert!(seen.submitted.contains_key(path), "{path} was sent");
        match result["status"].as_str() {
            Some("complete") => assert!(!path.contains("/broken/")),
            Some("failed") => {
                assert_eq!(result["detail"], "origin answered 502");
                failed.insert(path.to_owned());
            }
            other => panic!("{path}: {other:?}"),
        }
        assert!(result["id"].as_str().is_some_and(|id| !id.is_empty()), "{result}");
    }
    assert_eq!(failed.len(), 20);
    assert!(failed.iter().all(|path| path.contains("/broken/")));
    assert!(run.stderr.contains("failed              20"), "{}", run.stderr);
    let broken = results
        .iter()
        .find(|result| result["object"] == "https://d1.example.com/broken/7.js")
        .expect("reported");
    assert_eq!(
        broken["origin"],
        format!("{}:8", list.display()),
        "failures say file and line"
    );
}

#[tokio::test]
async fn a_list_beyond_the_remaining_quota_is_refused_with_the_numbers() {
    let (stand_in, address) = StandIn::start(Config {
        url_remain: 100,
        ..Config::default()
    })
    .await;
    let directory = tempfile::tempdir().expect("tempdir");
    let journal = directory.path().join("refresh.journal");
    let run_with = |count: usize| {
        let mut args = vec![
            "purge".to_owned(),
            "alibaba".into(),
            "refresh".into(),
            "--no-wait".into(),
            "--journal".into(),
            journal.display().to_string(),
            "--endpoint".into(),
            format!("http://{address}"),
        ];
        args.extend((0..count).map(|n| format!("https://example.com/{n}")));
        async move { common::edgecache_with_env(&args, &credentials_env()).await }
    };
    let run = run_with(150).await;
    assert!(!run.success);
    assert!(
        run.stderr
            .contains("needs 150 URL refreshes but only 100 of today's 10000 remain; nothing was sent"),
        "{}",
        run.stderr
    );
    {
        let seen = stand_in.seen();
        assert_eq!(seen.actions, ["DescribeRefreshQuota"]);
        assert_eq!(seen.accepted_calls, 0);
    }

    // The refused run's journal records nothing, so it does not stand in the way.
    let run = run_with(60).await;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(stand_in.seen().accepted_calls, 1);
}

#[tokio::test]
async fn bad_lines_are_reported_by_file_and_line_and_nothing_is_sent() {
    let (stand_in, address) = StandIn::start(Config::default()).await;
    let directory = tempfile::tempdir().expect("tempdir");
    let list = directory.path().join("dirs.txt");
    std::fs::write(
        &list,
        "https://example.com/a/\nftp://example.com/b/\n# a comment\nwww.example.com/c/\nhttps://example.com/d\n",
    )
    .expect("write");
    let run = common::edgecache_with_env(
        [
            "purge",
            "alibaba",
            "refresh",
            "--object-type",
            "directory",
            "-r",
            list.to_str().expect("utf-8"),
            "--endpoint",
            &format!("http://{address}"),
        ],
        &credentials_env(),
    )
    .await;
    assert!(!run.success);
    let file = list.display();
    for expected in [
        format!("{file}:2: must start with http:// or https://"),
        format!("{file}:4: must start with http:// or https://"),
        format!("{file}:5: a directory must end with `/`"),
        "3 invalid lines; nothing was sent".to_owned(),
    ] {
        assert!(run.stderr.contains(&expected), "{expected:?} in {}", run.stderr);
    }
    assert!(!run.stderr.contains(":1:"), "{}", run.stderr);
    assert_eq!(stand_in.seen().calls, 0, "not even the quota is asked for");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_run_resumes_without_resubmitting_anything_accepted() {
    let (stand_in, address) = StandIn::start(Config {
        submit_delay: Duration::from_millis(250),
        ..Config::default()
    })
    .await;
    let directory = tempfile::tempdir().expect("tempdir");
    let list = directory.path().join("urls.txt");
    let journal = directory.path().join("refresh.journal");
    let urls: Vec<String> = (0..2000).map(|n| format!("https://example.com/{n}.png")).collect();
    std::fs::write(&list, urls.join("\n")).expect("write");
    let endpoint = format!("http://{address}");
    let args = [
        "purge",
        "alibaba",
        "refresh",
        "-r",
        list.to_str().expect("utf-8"),
        "--batch-size",
        "20",
        "--endpoint",
        &endpoint,
        "--journal",
        journal.to_str().expect("utf-8"),
    ];

    let child = common::command(args, &credentials_env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while stand_in.seen().accepted_calls < 15 {
        assert!(Instant::now() < deadline, "the run never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().expect("pid").to_string();
    // Ctrl-C, through the shell's own `kill` (procps may not be installed).
    let killed = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {pid}")])
        .status()
        .expect("sh");
    assert!(killed.success());
    let output = child.wait_with_output().await.expect("exit");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "an interrupted run is not a success");
    assert!(stderr.contains("--resume"), "{stderr}");

    let accepted_before = stand_in.seen().accepted_calls;
    assert!(
        accepted_before < 100,
        "it stopped early ({accepted_before} of 100 calls)"
    );
    let records = std::fs::read_to_string(&journal).expect("journal").lines().count() - 1;
    assert_eq!(
        records, accepted_before,
        "every accepted call, in flight ones too, is journaled"
    );

    let mut resume = args.to_vec();
    resume.push("--resume");
    let run = common::edgecache_with_env(&resume, &credentials_env()).await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("from journal  {:>8}", accepted_before * 20)),
        "{}",
        run.stderr
    );
    {
        let seen = stand_in.seen();
        assert_eq!(seen.submitted.len(), 2000, "every URL sent");
        let twice: Vec<_> = seen.submitted.iter().filter(|(_, count)| **count > 1).collect();
        assert!(
            twice.is_empty(),
            "{} URLs sent twice, such as {:?}",
            twice.len(),
            twice.first()
        );
        assert_eq!(seen.accepted_calls, 100);
    }

    // Without --resume, the journal protects what it records.
    let again = common::edgecache_with_env(args, &credentials_env()).await;
    assert!(!again.success);
    assert!(again.stderr.contains("already records a run"), "{}", again.stderr);
}

fn quick(client: AlibabaCdnClient) -> AlibabaCdnClient {
    client
        .rate_limits(RateLimits {
            submit: (5, 45.0),
            describe: (10, 100.0),
            quota: (5, 20.0),
        })
        .backoff(Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(100),
        })
}

#[tokio::test]
async fn prefetch_sends_its_options_under_sts_credentials_and_reports_each_url() {
    let token = "CAIS-stand-in-token";
    let (stand_in, address) = StandIn::start(Config {
        token: Some(token.into()),
        ..Config::default()
    })
    .await;
    let credentials = Credentials::new(KEY_ID, SECRET).with_security_token(token);
    let client = quick(AlibabaCdnClient::new(credentials).expect("client"))
        .endpoint(format!("http://{address}").parse().expect("url"));
    let urls: Vec<String> = (0..250).map(|n| format!("https://example.com/warm/{n}")).collect();
    let options = PrefetchOptions {
        area: Some(Area::Overseas),
        l2_preload: true,
        headers: [("Accept-Encoding".to_owned(), "gzip".to_owned())].into(),
    };

    let too_big = client
        .batch(Operation::Prefetch(options.clone()))
        .batch_size(150)
        .run(urls.clone())
        .await
        .expect_err("above the per-call maximum");
    assert!(matches!(too_big, BatchError::BatchSize { max: 100, .. }), "{too_big}");

    let report = client
        .batch(Operation::Prefetch(options))
        .poll_interval(Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(200),
        })
        .run(urls)
        .await
        .expect("run");
    assert!(report.is_success());
    assert_eq!(report.count(|outcome| *outcome == Outcome::Complete), 250);
    {
        let seen = stand_in.seen();
        assert!(seen.bad_signatures.is_empty(), "{:?}", seen.bad_signatures);
        assert_eq!(seen.prefetch_parameters.len(), 3, "100 per call");
        for parameters in &seen.prefetch_parameters {
            assert_eq!(parameters["Area"], "overseas");
            assert_eq!(parameters["L2Preload"], "true");
            assert_eq!(parameters["WithHeader"], r#"{"Accept-Encoding":"gzip"}"#);
        }
    }

    let tasks = client.tasks(&TaskFilter::default()).await.expect("tasks");
    assert_eq!(tasks.len(), 250, "three pages of tasks, read page after page");
}

#[tokio::test]
async fn a_refused_call_is_a_typed_error_and_is_not_retried() {
    let (stand_in, address) = StandIn::start(Config::default()).await;
    let client = quick(AlibabaCdnClient::new(Credentials::new(KEY_ID, SECRET)).expect("client"))
        .endpoint(format!("http://{address}").parse().expect("url"));
    let error = client
        .refresh(&["https://unknown.example.com/a".to_owned()], ObjectType::File, false)
        .await
        .expect_err("unknown domain");
    let AlibabaError::Api {
        status,
        code,
        request_id,
        ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!((*status, code.as_str()), (400, "InvalidDomain.NotFound"));
    assert!(!request_id.is_empty());
    assert!(!error.is_retryable());
    assert_eq!(stand_in.seen().calls, 1);

    let wrong = quick(AlibabaCdnClient::new(Credentials::new(KEY_ID, "wrong secret")).expect("client"))
        .endpoint(format!("http://{address}").parse().expect("url"));
    let error = wrong.quota().await.expect_err("bad signature");
    assert_eq!(error.code(), Some("SignatureDoesNotMatch"));
    assert!(!format!("{error} {error:?} {wrong:?}").contains("wrong secret"));
}

#[tokio::test]
async fn tasks_still_refreshing_at_the_timeout_are_reported_as_such() {
    let (_stand_in, address) = StandIn::start(Config {
        task_delay: Duration::from_secs(600),
        ..Config::default()
    })
    .await;
    let run = common::edgecache_with_env(
        [
            "purge",
            "alibaba",
            "refresh",
            "https://example.com/slow",
            "--timeout",
            "1s",
            "--endpoint",
            &format!("http://{address}"),
        ],
        &credentials_env(),
    )
    .await;
    assert!(!run.success);
    assert!(
        run.stdout
            .contains("timed_out\thttps://example.com/slow\tstill in progress at the timeout"),
        "results on stdout: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains("timed out            1"),
        "summary on stderr: {}",
        run.stderr
    );
}

#[tokio::test]
async fn credentials_come_from_the_file_and_their_absence_is_explained() {
    let (stand_in, address) = StandIn::start(Config::default()).await;
    let directory = tempfile::tempdir().expect("tempdir");
    let file = directory.path().join("credentials");
    std::fs::write(
        &file,
        format!("[default]\naccess_key_id = nobody\naccess_key_secret = x\n\n[cdn]\ntype = access_key\naccess_key_id = {KEY_ID}\naccess_key_secret = {SECRET}\n"),
    )
    .expect("write");
    let endpoint = format!("http://{address}");
    let args = [
        "purge",
        "alibaba",
        "refresh",
        "https://example.com/a",
        "--no-wait",
        "--profile",
        "cdn",
        "--endpoint",
        &endpoint,
    ];
    let run = common::edgecache_with_env(
        args,
        &[("ALIBABA_CLOUD_CREDENTIALS_FILE", file.to_str().expect("utf-8"))],
    )
    .await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stderr.contains("accepted             1 (not waited for)"),
        "{}",
        run.stderr
    );
    assert_eq!(stand_in.seen().accepted_calls, 1);

    let home = directory.path().join("empty-home");
    std::fs::create_dir(&home).expect("mkdir");
    let run = common::edgecache_with_env(args, &[("HOME", home.to_str().expect("utf-8"))]).await;
    assert!(!run.success);
    for expected in [
        "ALIBABA_CLOUD_ACCESS_KEY_ID",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        ".alibabacloud/credentials",
    ] {
        assert!(run.stderr.contains(expected), "{expected} in {}", run.stderr);
    }
}
