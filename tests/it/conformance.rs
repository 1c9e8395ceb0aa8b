//! RFC 9111 (HTTP Caching) and RFC 9211 (Cache-Status), checked against a
//! real origin on 127.0.0.1. Each test names the section it checks.
//!
//! The origin answers `/PATH?h=Name:%20value&h=…&status=N` with those
//! headers and status, and the body `PATH #COUNT`; a path containing `304`
//! answers any `If-None-Match` with a `304` that echoes it in
//! `Seen-If-None-Match`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use edgecache::store::MemoryStore;
use edgecache::{CacheInfo, CacheMiddleware, ExpireAfter};
use reqwest_middleware::ClientWithMiddleware;

type Counts = Arc<Mutex<Vec<(String, String)>>>;

struct Origin {
    base: String,
    seen: Counts,
}

impl Origin {
    async fn start() -> Origin {
        let seen = Counts::default();
        let app = Router::new().fallback(answer).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Origin { base, seen }
    }

    /// A URL whose response carries `headers` (`Name: value`) and `status`.
    fn url(&self, path: &str, status: u16, headers: &[&str]) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("status", &status.to_string());
        for header in headers {
            query.append_pair("h", header);
        }
        format!("{}{path}?{}", self.base, query.finish())
    }

    fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .expect("log")
            .iter()
            .filter(|(seen, _)| seen == path)
            .count()
    }

    fn methods(&self, path: &str) -> Vec<String> {
        let seen = self.seen.lock().expect("log");
        seen.iter()
            .filter(|(seen, _)| seen == path)
            .map(|(_, method)| method.clone())
            .collect()
    }
}

async fn answer(State(seen): State<Counts>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let count = {
        let mut seen = seen.lock().expect("log");
        seen.push((path.clone(), request.method().to_string()));
        seen.iter().filter(|(other, _)| *other == path).count()
    };
    let mut response = Response::builder();
    let mut status = 200;
    for (name, value) in url::form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes()) {
        match &*name {
            "status" => status = value.parse().expect("status"),
            "h" => {
                let (name, value) = value.split_once(':').expect("Name: value");
                response = response.header(name.trim(), value.trim());
            }
            _ => {}
        }
    }
    if let Some(sent) = request.headers().get("if-none-match")
        && path.contains("304")
    {
        // Says what the cache sent, so tests can check its validators.
        return response
            .status(304)
            .header("seen-if-none-match", sent)
            .body(Body::empty())
            .expect("response");
    }
    response
        .status(status)
        .body(Body::from(format!("{path} #{count}")))
        .expect("response")
}

/// Redirects are not followed: the tests look at the 3xx themselves.
fn client_with(cache: CacheMiddleware) -> ClientWithMiddleware {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    reqwest_middleware::ClientBuilder::new(client).with(cache).build()
}

fn private() -> ClientWithMiddleware {
    client_with(
        CacheMiddleware::builder()
            .store(MemoryStore::default())
            .build()
            .expect("cache"),
    )
}

fn shared() -> ClientWithMiddleware {
    client_with(
        CacheMiddleware::builder()
            .store(MemoryStore::default())
            .shared(true)
            .build()
            .expect("cache"),
    )
}

/// Sends a GET with the given request headers; `(x-cache, body, response)`.
async fn fetch(
    client: &ClientWithMiddleware,
    url: &str,
    headers: &[(&str, &str)],
) -> (String, String, http::HeaderMap, CacheInfo) {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let head = response.headers().clone();
    let info = response.extensions().get::<CacheInfo>().expect("info").clone();
    let x_cache = head["x-cache"].to_str().expect("ascii").to_owned();
    (x_cache, response.text().await.expect("body"), head, info)
}

const OLD: &str = "Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT";

/// RFC 9111 §4.1: `Vary: *` in any position, or on any line, is never stored.
#[tokio::test]
async fn vary_with_a_star_anywhere_is_never_stored_rfc9111_4_1() {
    let origin = Origin::start().await;
    let client = private();
    for (path, vary) in [
        ("/a", vec!["Vary: Accept, *"]),
        ("/b", vec!["Vary: *, *"]),
        ("/c", vec!["Vary: , *"]),
        ("/d", vec!["Vary: Accept", "Vary: *"]),
    ] {
        let mut headers = vec!["Cache-Control: max-age=3600"];
        headers.extend(vary);
        let url = origin.url(path, 200, &headers);
        fetch(&client, &url, &[]).await;
        assert_eq!(fetch(&client, &url, &[]).await.0, "MISS", "{path}");
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}

/// RFC 9111 §4.2.3, §5.1: a hit carries `Age`: the response's own age
/// (from `Age`, or apparent from `Date`) plus the time it was stored.
#[tokio::test]
async fn age_on_hits_grows_from_age_and_date_rfc9111_4_2_3() {
    let origin = Origin::start().await;
    let client = private();
    let url = origin.url("/aged", 200, &["Cache-Control: max-age=3600", "Age: 30"]);
    fetch(&client, &url, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (x_cache, _, headers, _) = fetch(&client, &url, &[]).await;
    assert_eq!(x_cache, "HIT");
    let age: u64 = headers["age"].to_str().expect("ascii").parse().expect("number");
    assert!((31..40).contains(&age), "Age {age}: 30 plus the second it was stored");

    let an_hour_ago = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(100));
    let date = format!("Date: {an_hour_ago}");
    let url = origin.url("/dated", 200, &["Cache-Control: max-age=3600", &date]);
    fetch(&client, &url, &[]).await;
    let (_, _, headers, _) = fetch(&client, &url, &[]).await;
    let age: u64 = headers["age"].to_str().expect("ascii").parse().expect("number");
    assert!((100..110).contains(&age), "apparent age from Date: {age}");
}

/// RFC 9111 §5.2: directive names are case-insensitive; §5.1: of a list
/// `Age`, the first value counts; §5.3: an `Expires` that doesn't parse is
/// already expired.
#[tokio::test]
async fn header_parsing_follows_the_rfc_rfc9111_5_1_to_5_3() {
    let origin = Origin::start().await;
    let client = private();
    let cases = [
        ("/no-cache-mixed-case", vec!["Cache-Control: max-age=10000, No-CaChE"]),
        ("/age-list", vec!["Cache-Control: max-age=3600", "Age: 7200, 0"]),
        ("/bad-expires", vec!["Expires: Sat,  28 Nov 2099 00:00:00 GMT"]),
        ("/zero-expires", vec!["Expires: 0"]),
    ];
    for (path, headers) in cases {
        let url = origin.url(path, 200, &headers);
        fetch(&client, &url, &[]).await;
        assert_eq!(fetch(&client, &url, &[]).await.0, "MISS", "{path} must not be reused");
    }
    let url = origin.url("/huge", 200, &["Cache-Control: max-age=18446744073709551615"]);
    fetch(&client, &url, &[]).await;
    assert_eq!(fetch(&client, &url, &[]).await.0, "HIT", "2^64 counts as 2^31 (§1.2.2)");
}

/// RFC 9111 §3.1: headers named in `Connection` are not stored.
#[tokio::test]
async fn headers_named_in_connection_are_not_stored_rfc9111_3_1() {
    let origin = Origin::start().await;
    let client = private();
    let url = origin.url(
        "/conn",
        200,
        &[
            "Cache-Control: max-age=3600",
            "Connection: x-one, X-Two",
            "X-One: 1",
            "X-Two: 2",
            "X-Three: 3",
        ],
    );
    fetch(&client, &url, &[]).await;
    let (x_cache, _, headers, _) = fetch(&client, &url, &[]).await;
    assert_eq!(x_cache, "HIT");
    assert!(!headers.contains_key("x-one") && !headers.contains_key("x-two"));
    assert_eq!(headers["x-three"], "3");
}

/// RFC 9111 §4.2.2: heuristic freshness for heuristically cacheable
/// statuses with `Last-Modified`; without one, and without a validator, a
/// response is not stored; a configured expiry comes first.
#[tokio::test]
async fn heuristic_freshness_and_the_defaults_rfc9111_4_2_2() {
    let origin = Origin::start().await;
    let client = private();
    let url = origin.url("/heuristic", 200, &[OLD]);
    fetch(&client, &url, &[]).await;
    let (x_cache, _, _, info) = fetch(&client, &url, &[]).await;
    assert_eq!(x_cache, "HIT");
    let ttl = info.ttl.expect("ttl");
    assert!(
        (86_300..=86_400).contains(&ttl),
        "capped at heuristic_max (1 day): {ttl}"
    );

    let url = origin.url("/nothing", 200, &[]);
    fetch(&client, &url, &[]).await;
    assert_eq!(fetch(&client, &url, &[]).await.0, "MISS", "no freshness, no validator");

    let configured = client_with(
        CacheMiddleware::builder()
            .store(MemoryStore::default())
            .expire_after(ExpireAfter::Never)
            .build()
            .expect("cache"),
    );
    let url = origin.url("/configured", 200, &[]);
    fetch(&configured, &url, &[]).await;
    assert_eq!(
        fetch(&configured, &url, &[]).await.0,
        "HIT",
        "requests-cache style, when asked"
    );
}

/// RFC 9110 §15.1: heuristically cacheable statuses are stored; 302, 307
/// and other 4xx only with explicit freshness; 5xx (but 501) and 206 never.
#[tokio::test]
async fn statuses_follow_rfc9110_15_1() {
    let origin = Origin::start().await;
    let client = private();
    let cases: &[(&str, u16, &[&str], &str)] = &[
        ("/s404", 404, &[OLD], "HIT"),
        ("/s410", 410, &[OLD], "HIT"),
        ("/s301", 301, &["Cache-Control: max-age=60", "Location: /x"], "HIT"),
        ("/s302", 302, &["Cache-Control: max-age=60", "Location: /x"], "HIT"),
        ("/s302-plain", 302, &[OLD, "Location: /x"], "MISS"),
        ("/s403", 403, &["Cache-Control: max-age=60"], "HIT"),
        ("/s500", 500, &["Cache-Control: max-age=60"], "MISS"),
        ("/s501", 501, &[OLD], "HIT"),
        (
            "/s206",
            206,
            &["Cache-Control: max-age=60", "Content-Range: bytes 0-1/10"],
            "MISS",
        ),
    ];
    for (path, status, headers, expected) in cases {
        let url = origin.url(path, *status, headers);
        fetch(&client, &url, &[]).await;
        assert_eq!(fetch(&client, &url, &[]).await.0, *expected, "{path}");
    }
}

/// RFC 9111 §5.2.1: the request's `max-age`, `min-fresh`, `max-stale` and
/// `only-if-cached`.
#[tokio::test]
async fn request_directives_count_rfc9111_5_2_1() {
    let origin = Origin::start().await;
    let client = private();
    let url = origin.url("/fresh", 200, &["Cache-Control: max-age=100", "Age: 50"]);
    fetch(&client, &url, &[]).await;
    assert_eq!(fetch(&client, &url, &[("cache-control", "max-age=60")]).await.0, "HIT");
    assert_eq!(
        fetch(&client, &url, &[("cache-control", "max-age=10")]).await.0,
        "MISS",
        "too old"
    );
    assert_eq!(fetch(&client, &url, &[("cache-control", "min-fresh=5")]).await.0, "HIT");
    assert_eq!(
        fetch(&client, &url, &[("cache-control", "min-fresh=500")]).await.0,
        "MISS",
        "not fresh long enough"
    );

    let stale = origin.url("/stale", 200, &["Cache-Control: max-age=1", "ETag: \"e\""]);
    fetch(&client, &stale, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        fetch(&client, &stale, &[("cache-control", "max-stale")]).await.0,
        "STALE"
    );
    assert_eq!(
        fetch(&client, &stale, &[("cache-control", "max-stale=60")]).await.0,
        "STALE"
    );
    let revalidate = origin.url(
        "/must",
        200,
        &["Cache-Control: max-age=1, must-revalidate", "ETag: \"e\""],
    );
    fetch(&client, &revalidate, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        fetch(&client, &revalidate, &[("cache-control", "max-stale")]).await.0,
        "MISS",
        "must-revalidate wins over max-stale (§5.2.2.2)"
    );

    let response = client
        .get(origin.url("/never-seen", 200, &[]))
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 504);
    assert_eq!(origin.hits("/never-seen"), 0);
}

/// RFC 9111 §4.3.5: `HEAD` is answered from the stored `GET`, and a `HEAD`
/// sent to the origin updates it.
#[tokio::test]
async fn head_uses_and_updates_the_stored_get_rfc9111_4_3_5() {
    let origin = Origin::start().await;
    let client = private();
    let url = origin.url("/h", 200, &["Cache-Control: max-age=3600", "ETag: \"h\""]);
    fetch(&client, &url, &[]).await;
    let head = client.head(&url).send().await.expect("head");
    assert_eq!(head.headers()["x-cache"], "HIT");
    assert_eq!(origin.methods("/h"), ["GET"]);
    assert!(head.bytes().await.expect("body").is_empty());

    let stale = origin.url("/hs", 200, &["Cache-Control: max-age=0", "ETag: \"h\""]);
    fetch(&client, &stale, &[]).await;
    let head = client.head(&stale).send().await.expect("head");
    assert_eq!(head.headers()["x-cache"], "MISS");
    assert_eq!(origin.methods("/hs"), ["GET", "HEAD"], "the HEAD went to the origin");
}

/// RFC 9111 §4.4: an unsafe request invalidates `Location` and
/// `Content-Location` on the same origin.
#[tokio::test]
async fn unsafe_requests_invalidate_location_and_content_location_rfc9111_4_4() {
    let origin = Origin::start().await;
    let client = private();
    let target = origin.url("/target", 200, &["Cache-Control: max-age=3600"]);
    let other = origin.url("/other", 200, &["Cache-Control: max-age=3600"]);
    fetch(&client, &target, &[]).await;
    fetch(&client, &other, &[]).await;
    let path_of = |url: &str| url.strip_prefix(&origin.base).expect("same origin").to_owned();
    let location = format!("Location: {}", path_of(&target));
    let content_location = format!("Content-Location: {other}");
    client
        .post(origin.url("/update", 201, &[&location, &content_location]))
        .send()
        .await
        .expect("post");
    assert_eq!(fetch(&client, &target, &[]).await.0, "MISS");
    assert_eq!(fetch(&client, &other, &[]).await.0, "MISS");
}

/// RFC 9111 §4.1: several variants per URL, and `Vary`-selected values
/// compared as lists.
#[tokio::test]
async fn several_variants_per_url_with_normalized_values_rfc9111_4_1() {
    let origin = Origin::start().await;
    let client = private();
    let url = origin.url("/v", 200, &["Cache-Control: max-age=3600", "Vary: Accept-Language"]);
    let lang = |value: &'static str| [("accept-language", value)];
    assert_eq!(fetch(&client, &url, &lang("en, fr")).await.0, "MISS");
    assert_eq!(fetch(&client, &url, &lang("de")).await.0, "MISS");
    let (x_cache, body, _, _) = fetch(&client, &url, &lang("EN,fr")).await;
    assert_eq!(
        (x_cache.as_str(), body.as_str()),
        ("HIT", "/v #1"),
        "the first variant survives the second"
    );
    let (x_cache, body, _, _) = fetch(&client, &url, &lang("de")).await;
    assert_eq!((x_cache.as_str(), body.as_str()), ("HIT", "/v #2"));
    assert_eq!(fetch(&client, &url, &lang("fr")).await.0, "MISS");
}

/// RFC 9111 §4.3.2: a fresh entry answers the client's own conditional
/// request: `304` when its validator matches, the full response otherwise.
#[tokio::test]
async fn client_conditionals_are_answered_from_a_fresh_entry_rfc9111_4_3_2() {
    let origin = Origin::start().await;
    let client = private();
    let url = origin.url("/cond", 200, &["Cache-Control: max-age=3600", "ETag: \"v1\"", OLD]);
    fetch(&client, &url, &[]).await;
    let response = client
        .get(&url)
        .header("if-none-match", "W/\"v1\"")
        .send()
        .await
        .expect("request");
    assert_eq!(
        (response.status().as_u16(), &response.headers()["x-cache"]),
        (304, &"HIT".parse::<http::HeaderValue>().expect("value"))
    );
    let response = client
        .get(&url)
        .header("if-none-match", "\"v0\"")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let response = client
        .get(&url)
        .header("if-modified-since", "Thu, 22 Oct 2015 07:28:00 GMT")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 304);
    assert_eq!(origin.hits("/cond"), 1);
}

/// RFC 9111 §3, §3.5, §4.2.1 in a shared cache: `private` is not stored,
/// `s-maxage` counts, and `Authorization` needs `public`, `s-maxage` or
/// `must-revalidate`; a private cache stores `private`.
#[tokio::test]
async fn shared_mode_rules_rfc9111_3_5() {
    let origin = Origin::start().await;
    let (private, shared) = (private(), shared());
    let url = origin.url("/private", 200, &["Cache-Control: private, max-age=3600"]);
    fetch(&shared, &url, &[]).await;
    assert_eq!(fetch(&shared, &url, &[]).await.0, "MISS");
    fetch(&private, &url, &[]).await;
    assert_eq!(fetch(&private, &url, &[]).await.0, "HIT");

    let url = origin.url("/s-maxage", 200, &["Cache-Control: max-age=0, s-maxage=3600"]);
    fetch(&shared, &url, &[]).await;
    assert_eq!(fetch(&shared, &url, &[]).await.0, "HIT");
    fetch(&private, &url, &[]).await;
    assert_eq!(fetch(&private, &url, &[]).await.0, "MISS");

    let auth = [("authorization", "Bearer t")];
    let url = origin.url("/auth", 200, &["Cache-Control: max-age=3600"]);
    fetch(&shared, &url, &auth).await;
    assert_eq!(fetch(&shared, &url, &auth).await.0, "MISS");
    let url = origin.url("/auth-public", 200, &["Cache-Control: public, max-age=3600"]);
    fetch(&shared, &url, &auth).await;
    assert_eq!(fetch(&shared, &url, &auth).await.0, "HIT");
}

/// RFC 9211: `Cache-Status` on every response, and the same facts in `CacheInfo`.
#[tokio::test]
async fn cache_status_says_what_happened_rfc9211() {
    let origin = Origin::start().await;
    let client = private();
    let url = origin.url("/cs", 200, &["Cache-Control: max-age=60"]);
    let (_, _, headers, info) = fetch(&client, &url, &[]).await;
    assert_eq!(
        headers["cache-status"],
        "edgecache; fwd=uri-miss; fwd-status=200; stored"
    );
    assert_eq!(headers["cache-status"].to_str().expect("ascii"), info.cache_status());
    let (_, _, headers, _) = fetch(&client, &url, &[]).await;
    let value = headers["cache-status"].to_str().expect("ascii");
    assert!(
        value.starts_with("edgecache; hit; ttl=") && value.ends_with(['9', '0', '8']),
        "{value}"
    );

    let revalidating = origin.url("/cs-304", 200, &["Cache-Control: max-age=0", "ETag: \"x\""]);
    fetch(&client, &revalidating, &[]).await;
    let (x_cache, _, headers, _) = fetch(&client, &revalidating, &[]).await;
    assert_eq!(x_cache, "REVALIDATED");
    assert!(
        headers["cache-status"]
            .to_str()
            .expect("ascii")
            .starts_with("edgecache; fwd=stale; fwd-status=304"),
        "{:?}",
        headers["cache-status"]
    );

    let quiet = client_with(
        CacheMiddleware::builder()
            .store(MemoryStore::default())
            .cache_status_header(false)
            .x_cache_header(false)
            .build()
            .expect("cache"),
    );
    let response = quiet.get(&url).send().await.expect("request");
    assert!(!response.headers().contains_key("cache-status") && !response.headers().contains_key("x-cache"));
    assert!(response.extensions().get::<CacheInfo>().is_some());
}

/// RFC 9111 §4.2.1, in a long run: a response whose only freshness is
/// `Expires` is reused although hundreds of unsafe requests to other URLs,
/// and varied exchanges, went through the same cache while it was fetched.
/// (Invalidations were once counted in 64 shards of URLs, so any unrelated
/// `PUT` in the same shard kept the response out of the cache.)
#[tokio::test]
async fn expires_alone_keeps_a_response_fresh_while_other_urls_are_invalidated_rfc9111_4_2_1() {
    use axum::routing::{get, put};
    use tokio::sync::{Notify, Semaphore};

    let asked = Arc::new(Notify::new());
    let release = Arc::new(Semaphore::new(0));
    let expires_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/expires",
            get({
                let (asked, release, hits) = (asked.clone(), release.clone(), expires_hits.clone());
                move || async move {
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    asked.notify_one();
                    // The first answer waits until the test has sent the other traffic.
                    let _permit = release.acquire().await.expect("gate");
                    let now = SystemTime::now();
                    Response::builder()
                        .header("date", httpdate::fmt_http_date(now))
                        .header(
                            "expires",
                            httpdate::fmt_http_date(now + Duration::from_secs(30 * 86_400)),
                        )
                        .body(Body::from("expires"))
                        .expect("response")
                }
            }),
        )
        .route("/config/{id}", put(|| async { (http::StatusCode::CREATED, "created") }))
        .fallback(answer)
        .with_state(Counts::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let origin = Origin {
        base: base.clone(),
        seen: Counts::default(),
    };

    let client = private();
    let suite_headers = [("pragma", "foo"), ("cache-control", "nothing-to-see-here")];
    let first = tokio::spawn({
        let (client, url) = (client.clone(), format!("{base}/expires"));
        async move { fetch(&client, &url, &suite_headers).await.0 }
    });
    asked.notified().await;

    // While the first fetch is under way: many unsafe requests to distinct
    // URLs, and the odd exchanges a conformance run sends.
    let mut traffic = tokio::task::JoinSet::new();
    for id in 0..600 {
        let (client, base) = (client.clone(), base.clone());
        traffic.spawn(async move {
            let response = client
                .put(format!("{base}/config/{id}"))
                .body("{}")
                .send()
                .await
                .expect("put");
            assert_eq!(response.status(), 201);
        });
    }
    let odd: Vec<String> = vec![
        origin.url("/odd/status", 299, &["Cache-Control: max-age=60"]),
        origin.url(
            "/odd/vary",
            200,
            &["Cache-Control: max-age=60", "Vary: Accept-Language"],
        ),
        origin.url("/odd/no-store", 200, &["Cache-Control: no-store"]),
        origin.url("/odd/304", 200, &["Cache-Control: max-age=0", "ETag: \"x\""]),
        origin.url("/odd/huge", 200, &["Cache-Control: max-age=99999999999999999999999"]),
        origin.url(
            "/odd/bad",
            200,
            &["Cache-Control: max-age=-1, s-maxage=\"x\"", "Age: -5"],
        ),
        origin.url("/odd/error", 503, &["Retry-After: 1"]),
    ];
    for round in 0..20 {
        for url in &odd {
            let (client, url) = (client.clone(), url.clone());
            traffic.spawn(async move {
                let language = if round % 2 == 0 { "en" } else { "fr" };
                fetch(&client, &url, &[("accept-language", language)]).await;
                client.head(&url).send().await.expect("head");
                client.post(&url).body("x").send().await.expect("post");
            });
        }
    }
    while let Some(done) = traffic.join_next().await {
        done.expect("traffic");
    }
    release.add_permits(1);
    assert_eq!(first.await.expect("first"), "MISS");

    let (x_cache, body, _, _) = fetch(&client, &format!("{base}/expires"), &suite_headers).await;
    assert_eq!((x_cache.as_str(), body.as_str()), ("HIT", "expires"));
    assert_eq!(expires_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// RFC 9213 §2.2: in a shared cache the first valid targeted field
/// (`Edgecache-Cache-Control`, then `CDN-Cache-Control`) replaces
/// `Cache-Control` and `Expires`; an invalid one is ignored whole; a private
/// cache ignores them all.
#[tokio::test]
async fn targeted_cache_control_rfc9213_2_2() {
    let origin = Origin::start().await;
    let (private, shared) = (private(), shared());
    let far = "Expires: Thu, 01 Jan 2099 00:00:00 GMT";
    let past = "Expires: Thu, 01 Jan 1998 00:00:00 GMT";
    // (path, headers, second answer in a shared cache, in a private one)
    let cases: &[(&str, &[&str], &str, &str)] = &[
        (
            "/cdn/private",
            &["CDN-Cache-Control: private", "Cache-Control: max-age=10000", far],
            "MISS",
            "HIT",
        ),
        (
            "/cdn/no-store",
            &["Cache-Control: max-age=10000", "CDN-Cache-Control: no-store", far],
            "MISS",
            "HIT",
        ),
        (
            "/cdn/fresh-cc-no-store",
            &["Cache-Control: no-store", "CDN-Cache-Control: max-age=10000"],
            "HIT",
            "MISS",
        ),
        (
            "/cdn/past-expires",
            &["CDN-Cache-Control: max-age=3600", past],
            "HIT",
            "MISS",
        ),
        ("/cdn/zero", &["CDN-Cache-Control: max-age=0", far], "MISS", "HIT"),
        (
            "/cdn/short",
            &[
                "Cache-Control: max-age=3600",
                "CDN-Cache-Control: max-age=60",
                "Age: 120",
            ],
            "MISS",
            "HIT",
        ),
        (
            "/cdn/invalid",
            &["CDN-Cache-Control: max-age=10000, &&&&&", "Cache-Control: no-store"],
            "MISS",
            "MISS",
        ),
        (
            "/cdn/wrong-type",
            &["CDN-Cache-Control: max-age=\"10000\"", "Cache-Control: no-store"],
            "MISS",
            "MISS",
        ),
        (
            "/cdn/space",
            &["Cache-Control: no-store", "CDN-Cache-Control: max-age =100"],
            "MISS",
            "MISS",
        ),
        (
            "/cdn/ours-first",
            &[
                "Edgecache-Cache-Control: no-store",
                "CDN-Cache-Control: max-age=60",
                "Cache-Control: max-age=60",
            ],
            "MISS",
            "HIT",
        ),
        (
            "/cdn/ours-invalid",
            &[
                "Edgecache-Cache-Control: max-age=",
                "CDN-Cache-Control: max-age=60",
                "Cache-Control: no-store",
            ],
            "HIT",
            "MISS",
        ),
    ];
    for (path, headers, in_shared, in_private) in cases {
        for (client, mode, expected) in [(&shared, "shared", in_shared), (&private, "private", in_private)] {
            let url = origin.url(&format!("{path}/{mode}"), 200, headers);
            let (_, _, first, _) = fetch(client, &url, &[]).await;
            assert!(
                first.contains_key("cdn-cache-control"),
                "{path}: the field is passed on"
            );
            let (x_cache, ..) = fetch(client, &url, &[]).await;
            assert_eq!(&x_cache, expected, "{path} in a {mode} cache");
        }
    }

    // `no-cache` in the targeted field: stored, but revalidated before reuse.
    let url = origin.url(
        "/cdn/no-cache",
        200,
        &[
            "CDN-Cache-Control: no-cache",
            "Cache-Control: max-age=10000",
            "ETag: \"n\"",
        ],
    );
    fetch(&shared, &url, &[]).await;
    fetch(&shared, &url, &[]).await;
    assert_eq!(
        origin.hits("/cdn/no-cache"),
        2,
        "the second request was revalidated with the origin"
    );

    // An empty list turns targeted fields off.
    let plain = client_with(
        CacheMiddleware::builder()
            .store(MemoryStore::default())
            .shared(true)
            .targeted_fields([])
            .build()
            .expect("cache"),
    );
    let url = origin.url(
        "/cdn/off",
        200,
        &["Cache-Control: max-age=60", "CDN-Cache-Control: no-store"],
    );
    fetch(&plain, &url, &[]).await;
    assert_eq!(fetch(&plain, &url, &[]).await.0, "HIT");
}

/// RFC 9111 §4.3.1 and §4.3.2: a stale entry with a weak `ETag` is
/// revalidated with that weak tag; a fresh entry without `Last-Modified`
/// answers `If-Modified-Since` by its `Date`, else the time it arrived.
#[tokio::test]
async fn weak_etags_and_dates_validate_rfc9111_4_3_1_and_4_3_2() {
    let origin = Origin::start().await;
    let client = private();
    let url = origin.url("/weak-304", 200, &["Cache-Control: max-age=0", "ETag: W/\"w1\""]);
    let (_, first, ..) = fetch(&client, &url, &[]).await;
    let (x_cache, body, head, _) = fetch(&client, &url, &[]).await;
    assert_eq!((x_cache.as_str(), body), ("REVALIDATED", first));
    assert_eq!(head["seen-if-none-match"], "W/\"w1\"");

    let date = SystemTime::now() - Duration::from_secs(60);
    let date_header = format!("Date: {}", httpdate::fmt_http_date(date));
    let dated = origin.url("/dated", 200, &["Cache-Control: max-age=3600", &date_header]);
    let at = |offset: i64| -> &'static str {
        let time = if offset < 0 {
            date - Duration::from_secs(offset.unsigned_abs())
        } else {
            date + Duration::from_secs(offset.unsigned_abs())
        };
        Box::leak(httpdate::fmt_http_date(time).into_boxed_str())
    };
    let undated = origin.url("/undated", 200, &["Cache-Control: max-age=3600"]);
    fetch(&client, &dated, &[]).await;
    fetch(&client, &undated, &[]).await;
    let status = |url: String, since: &'static str| {
        let client = client.clone();
        async move {
            let response = client
                .get(url)
                .header("if-modified-since", since)
                .send()
                .await
                .expect("request");
            response.status().as_u16()
        }
    };
    assert_eq!(status(dated.clone(), at(0)).await, 304);
    assert_eq!(status(dated, at(-1)).await, 200);
    assert_eq!(status(undated.clone(), at(86_400)).await, 304);
    assert_eq!(status(undated, "Tue, 20 Oct 2015 07:28:00 GMT").await, 200);
    assert_eq!((origin.hits("/dated"), origin.hits("/undated")), (1, 1));
}
