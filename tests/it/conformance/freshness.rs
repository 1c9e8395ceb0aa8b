//! How long a response is fresh (RFC 9111 §4.2, §5; RFC 9213): `Age`, header parsing, heuristics, request directives, `Expires`, targeted fields.

use super::*;

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

/// Each hit carries its own `Age` and `Cache-Status` `ttl`: a second later
/// both have moved, and `Age` plus the `ttl` left stays the response's
/// freshness lifetime (RFC 9111 §4.2.3, RFC 9211 §2.7).
#[tokio::test]
async fn hits_a_second_apart_carry_their_own_age_and_ttl() {
    let origin = Origin::start().await;
    let client = shared();
    let url = origin.url("/marks", 200, &["Cache-Control: max-age=3600", "Age: 30"]);
    fetch(&client, &url, &[]).await;
    let marks = async || {
        let (x_cache, _, headers, _) = fetch(&client, &url, &[]).await;
        assert_eq!(x_cache, "HIT");
        let age: i64 = headers["age"].to_str().expect("ascii").parse().expect("number");
        let cache_status = headers["cache-status"].to_str().expect("ascii").to_owned();
        let ttl: i64 = cache_status
            .split("; ")
            .find_map(|part| part.strip_prefix("ttl="))
            .and_then(|ttl| ttl.parse().ok())
            .unwrap_or_else(|| panic!("no ttl in {cache_status:?}"));
        assert!(
            (3599..=3600).contains(&(age + ttl)),
            "Age {age} and ttl {ttl} add up to the lifetime"
        );
        (age, ttl)
    };
    let (first_age, first_ttl) = marks().await;
    marks().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (later_age, later_ttl) = marks().await;
    assert!(later_age > first_age, "Age {later_age} after {first_age}");
    assert!(later_ttl < first_ttl, "ttl {later_ttl} after {first_ttl}");
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
