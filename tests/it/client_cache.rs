//! The client cache through reqwest-middleware, against a real local origin.

use edgecache_testkit as common;

use std::time::Duration;

use common::{Origin, all_bytes_in, client, contains, get};
use edgecache::store::{MemoryStore, SqliteStore};
use edgecache::{CacheInfo, CacheMiddleware, CacheMode, CacheStatus, ExpireAfter, MatchHeaders};
use http::Method;

fn memory_cache() -> CacheMiddleware {
    CacheMiddleware::builder()
        .store(MemoryStore::default())
        .build()
        .expect("cache")
}

#[tokio::test]
async fn a_miss_then_a_hit_reaches_the_origin_once() {
    let origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let sqlite = SqliteStore::open(directory.path().join("cache.sqlite")).expect("open");
    for cache in [
        memory_cache(),
        CacheMiddleware::builder().store(sqlite).build().expect("cache"),
    ] {
        let client = client(&cache);
        let url = origin.url("/max-age/60");
        let before = origin.hits("/max-age/60");
        let (first, first_body) = get(&client, &url).await;
        let response = client.get(&url).send().await.expect("request");
        let info = response.extensions().get::<CacheInfo>().cloned().expect("cache info");
        assert_eq!(
            response.url().as_str(),
            url,
            "a cached response reports the request URL"
        );
        assert_eq!(response.headers()["x-cache"], "HIT");
        assert_eq!(response.text().await.expect("body"), first_body);
        assert_eq!(first, "MISS");
        assert_eq!(origin.hits("/max-age/60") - before, 1);
        assert!(info.from_cache && !info.is_expired && !info.revalidated);
        assert!(
            info.expires
                .is_some_and(|expires| expires > info.created_at.expect("created"))
        );
    }
}

#[tokio::test]
async fn no_store_responses_are_never_stored() {
    let origin = Origin::start().await;
    let cache = memory_cache();
    let client = client(&cache);
    for _ in 0..2 {
        assert_eq!(get(&client, &origin.url("/no-store")).await.0, "MISS");
    }
    assert_eq!(origin.hits("/no-store"), 2);
    assert_eq!(cache.len().await.expect("len"), 0);
}

#[tokio::test]
async fn max_age_expiry_sends_the_next_request_to_the_origin() {
    let origin = Origin::start().await;
    let client = client(&memory_cache());
    let url = origin.url("/max-age/1");
    assert_eq!(get(&client, &url).await.0, "MISS");
    assert_eq!(get(&client, &url).await.0, "HIT");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (x_cache, body) = get(&client, &url).await;
    assert_eq!((x_cache.as_str(), body.as_str()), ("MISS", "GET /max-age/1 #2"));
}

#[tokio::test]
async fn etag_revalidation_sends_if_none_match_and_serves_the_stored_body_on_304() {
    let origin = Origin::start().await;
    let client = client(&memory_cache());
    let url = origin.url("/etag");
    let (first, body) = get(&client, &url).await;
    let response = client.get(&url).send().await.expect("request");
    let info = response.extensions().get::<CacheInfo>().cloned().expect("info");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-cache"], "REVALIDATED");
    assert_eq!(response.text().await.expect("body"), body);
    assert_eq!(first, "MISS");
    assert!(info.revalidated && info.from_cache);
    let seen = origin.seen("/etag");
    assert_eq!(seen.len(), 2);
    assert!(seen[0].headers.get("if-none-match").is_none());
    assert_eq!(seen[1].headers["if-none-match"], "\"v1\"");
}

#[tokio::test]
async fn last_modified_revalidation_sends_if_modified_since() {
    let origin = Origin::start().await;
    let client = client(&memory_cache());
    let url = origin.url("/last-modified");
    let (_, body) = get(&client, &url).await;
    assert_eq!(get(&client, &url).await, ("REVALIDATED".to_owned(), body));
    let seen = origin.seen("/last-modified");
    assert_eq!(seen[1].headers["if-modified-since"], "Wed, 21 Oct 2015 07:28:00 GMT");
}

/// Issue: one user got another's response. Credentials separate entries
/// (a keyed digest in the key) and never reach the file; ignored parameters
/// share an entry and never reach it either.
#[tokio::test]
async fn credentials_separate_users_ignored_parameters_share_and_neither_reaches_the_sqlite_file() {
    let origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = CacheMiddleware::builder()
        .store(SqliteStore::open(directory.path().join("cache.sqlite")).expect("open"))
        .match_headers(MatchHeaders::All)
        .ignored_parameters(["utm_source"])
        .build()
        .expect("cache");
    let client = client(&cache);
    let send = |query: &'static str, token: &'static str| {
        let client = client.clone();
        let url = origin.url(&format!("/plain?{query}"));
        async move {
            let response = client
                .get(url)
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .expect("request");
            let x_cache = response.headers()["x-cache"].to_str().expect("ascii").to_owned();
            (x_cache, response.text().await.expect("body"))
        }
    };
    let alice = send("q=1&api_key=SECRET-ONE&utm_source=mail", "TOKEN-ONE").await;
    assert_eq!(alice, ("MISS".into(), "GET /plain #1".into()));
    let bob = send("api_key=SECRET-TWO&q=1&utm_source=web", "TOKEN-TWO").await;
    assert_eq!(
        bob,
        ("MISS".into(), "GET /plain #2".into()),
        "Bob never gets Alice's response"
    );
    let alice_again = send("utm_source=ad&q=1&api_key=SECRET-ONE", "TOKEN-ONE").await;
    assert_eq!(
        alice_again,
        ("HIT".into(), "GET /plain #1".into()),
        "Alice gets her own"
    );
    let bob_other_key = send("api_key=SECRET-ONE&q=1", "TOKEN-TWO").await;
    assert_eq!(bob_other_key.0, "MISS", "every credential takes part");
    assert_eq!(cache.urls().await.expect("urls"), [origin.url("/plain?q=1")]);

    let bytes = all_bytes_in(directory.path());
    assert!(contains(&bytes, "/plain?q=1"), "the test reads the right files");
    for secret in [
        "SECRET-ONE",
        "SECRET-TWO",
        "TOKEN-ONE",
        "TOKEN-TWO",
        "api_key",
        "utm_source",
    ] {
        assert!(!contains(&bytes, secret), "{secret} reached the cache file");
    }
}

#[tokio::test]
async fn only_allowed_statuses_and_methods_are_cached() {
    let origin = Origin::start().await;
    let client = client(&memory_cache());
    for _ in 0..2 {
        assert_eq!(get(&client, &origin.url("/status/500")).await.0, "MISS");
        client
            .post(origin.url("/post-default"))
            .body("a")
            .send()
            .await
            .expect("post");
    }
    assert_eq!(origin.hits("/status/500"), 2, "5xx is not stored by default");
    assert_eq!(origin.hits("/post-default"), 2);

    let cache = CacheMiddleware::builder()
        .store(MemoryStore::default())
        .allowed_statuses([200, 500])
        .allowed_methods([Method::GET, Method::POST])
        .expire_after(Duration::from_secs(60))
        .build()
        .expect("cache");
    let client = common::client(&cache);
    assert_eq!(get(&client, &origin.url("/status/500")).await.0, "MISS");
    assert_eq!(get(&client, &origin.url("/status/500")).await.0, "HIT");
    let post = |body: &'static str| client.post(origin.url("/post-allowed")).body(body).send();
    assert_eq!(post("a").await.expect("post").headers()["x-cache"], "MISS");
    assert_eq!(post("a").await.expect("post").headers()["x-cache"], "HIT");
    assert_eq!(
        post("b").await.expect("post").headers()["x-cache"],
        "MISS",
        "the body is part of the key"
    );
    assert_eq!(origin.hits("/post-allowed"), 2);
}

#[tokio::test]
async fn a_filter_keeps_responses_out() {
    let origin = Origin::start().await;
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::default())
        .filter(|response| !response.headers.contains_key("cache-control"))
        .build()
        .expect("cache");
    let client = client(&cache);
    for _ in 0..2 {
        get(&client, &origin.url("/max-age/60")).await;
        get(&client, &origin.url("/plain")).await;
    }
    assert_eq!((origin.hits("/max-age/60"), origin.hits("/plain")), (2, 1));
}

#[tokio::test]
async fn expiry_precedence_is_per_request_then_url_pattern_then_default() {
    let origin = Origin::start().await;
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::default())
        .expire_after(ExpireAfter::DoNotCache)
        .urls_expire_after([(format!("{}/patterned", origin.address), ExpireAfter::Never)])
        .build()
        .expect("cache");
    let client = client(&cache);
    for _ in 0..2 {
        get(&client, &origin.url("/patterned/a")).await;
        get(&client, &origin.url("/default")).await;
        let per_request = client
            .get(origin.url("/patterned/b"))
            .with_extension(ExpireAfter::DoNotCache);
        per_request.send().await.expect("request");
    }
    assert_eq!(origin.hits("/patterned/a"), 1, "the URL pattern beats the default");
    assert_eq!(origin.hits("/default"), 2, "the default applies elsewhere");
    assert_eq!(
        origin.hits("/patterned/b"),
        2,
        "the per-request expiry beats the pattern"
    );
}

#[tokio::test]
async fn response_headers_win_unless_turned_off() {
    let origin = Origin::start().await;
    let honoring = client(
        &CacheMiddleware::builder()
            .store(MemoryStore::default())
            .build()
            .expect("cache"),
    );
    let ignoring = client(
        &CacheMiddleware::builder()
            .store(MemoryStore::default())
            .cache_control(false)
            .expire_after(ExpireAfter::Never)
            .build()
            .expect("cache"),
    );
    // `max-age=0` without a validator: not worth storing when headers count.
    for _ in 0..2 {
        get(&honoring, &origin.url("/max-age/0")).await;
    }
    assert_eq!(origin.hits("/max-age/0"), 2);
    for _ in 0..2 {
        get(&ignoring, &origin.url("/max-age/0")).await;
    }
    assert_eq!(
        origin.hits("/max-age/0"),
        3,
        "with headers ignored, the configured expiry (never) applies"
    );
}

#[tokio::test]
async fn each_cache_mode_does_what_it_says() {
    let origin = Origin::start().await;
    let cache = memory_cache();
    let client = client(&cache);
    let send = |path: &str, mode: CacheMode| client.get(origin.url(path)).with_extension(mode).send();

    // OnlyIfCached: a miss is a 504 that never reaches the origin; a hit is served.
    let miss = send("/fresh-etag", CacheMode::OnlyIfCached).await.expect("request");
    assert_eq!(miss.status(), 504);
    assert_eq!(origin.hits("/fresh-etag"), 0);
    get(&client, &origin.url("/fresh-etag")).await;
    let hit = send("/fresh-etag", CacheMode::OnlyIfCached).await.expect("request");
    assert_eq!(
        (hit.status().as_u16(), hit.headers()["x-cache"].to_str().expect("ascii")),
        (200, "HIT")
    );

    // Refresh: even a fresh entry is revalidated.
    let refreshed = send("/fresh-etag", CacheMode::Refresh).await.expect("request");
    assert_eq!(refreshed.headers()["x-cache"], "REVALIDATED");
    assert_eq!(origin.seen("/fresh-etag")[1].headers["if-none-match"], "\"v1\"");

    // ForceRefresh: the entry is ignored, the new response stored.
    get(&client, &origin.url("/max-age/60")).await;
    let forced = send("/max-age/60", CacheMode::ForceRefresh).await.expect("request");
    assert_eq!(forced.headers()["x-cache"], "MISS");
    assert_eq!(forced.text().await.expect("body"), "GET /max-age/60 #2");
    assert_eq!(
        get(&client, &origin.url("/max-age/60")).await,
        ("HIT".into(), "GET /max-age/60 #2".into())
    );

    // NoStore: straight through, nothing stored.
    for _ in 0..2 {
        send("/max-age/30", CacheMode::NoStore).await.expect("request");
    }
    assert_eq!(origin.hits("/max-age/30"), 2);
    assert!(!cache.contains_url(&origin.url("/max-age/30")).await.expect("contains"));
}

#[tokio::test]
async fn a_successful_unsafe_request_invalidates_the_url() {
    let origin = Origin::start().await;
    let client = client(&memory_cache());
    let url = origin.url("/items?page=1");
    get(&client, &url).await;
    assert_eq!(get(&client, &url).await.0, "HIT");
    let posted = client.post(&url).body("new item").send().await.expect("post");
    assert_eq!(posted.headers()["x-cache"], "MISS");
    assert_eq!(get(&client, &url).await, ("MISS".into(), "GET /items #3".into()));
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let origin = Origin::start().await;
    let client = client(&memory_cache());
    let (client, origin) = (&client, &origin);
    let fetch = |lang: &'static str| async move {
        let response = client
            .get(origin.url("/vary"))
            .header("accept-language", lang)
            .send()
            .await
            .expect("request");
        let x_cache = response.headers()["x-cache"].to_str().expect("ascii").to_owned();
        (x_cache, response.text().await.expect("body"))
    };
    assert_eq!(fetch("en").await, ("MISS".into(), "GET /vary #1 lang=en".into()));
    assert_eq!(fetch("en").await, ("HIT".into(), "GET /vary #1 lang=en".into()));
    assert_eq!(fetch("pt").await, ("MISS".into(), "GET /vary #2 lang=pt".into()));
}

#[tokio::test]
async fn bodies_over_the_limit_stream_through_and_are_not_stored() {
    let origin = Origin::start().await;
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::default())
        .max_body_size(64 * 1024)
        .build()
        .expect("cache");
    let client = client(&cache);
    for _ in 0..2 {
        let (x_cache, body) = get(&client, &origin.url("/large/200000")).await;
        assert_eq!((x_cache.as_str(), body.len()), ("MISS", 200_000));
        assert!(body.bytes().all(|byte| byte == b'x'));
    }
    let (x_cache, body) = get(&client, &origin.url("/large/1000")).await;
    assert_eq!((x_cache.as_str(), body.len()), ("MISS", 1000));
    assert_eq!(get(&client, &origin.url("/large/1000")).await.0, "HIT");
    assert_eq!(origin.hits("/large/200000"), 2);
    assert_eq!(cache.len().await.expect("len"), 1);
}

#[tokio::test]
async fn the_x_cache_header_can_be_turned_off_but_cache_info_stays() {
    let origin = Origin::start().await;
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::default())
        .x_cache_header(false)
        .build()
        .expect("cache");
    let client = client(&cache);
    get(&client, &origin.url("/plain")).await;
    let response = client.get(origin.url("/plain")).send().await.expect("request");
    assert!(response.headers().get("x-cache").is_none());
    let info = response.extensions().get::<CacheInfo>().expect("info");
    assert_eq!(info.status, CacheStatus::Hit);
}

#[tokio::test]
async fn inspection_lists_counts_and_deletes() {
    let origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = CacheMiddleware::builder()
        .store(SqliteStore::open(directory.path().join("cache.sqlite")).expect("open"))
        .urls_expire_after([(format!("{}/short", origin.address), ExpireAfter::Immediately)])
        .build()
        .expect("cache");
    let client = client(&cache);
    for path in ["/a", "/b?x=1", "/last-modified", "/etag"] {
        get(&client, &origin.url(path)).await;
    }
    assert!(cache.contains_url(&origin.url("/b?x=1")).await.expect("contains"));
    assert!(!cache.contains_url(&origin.url("/b?x=2")).await.expect("contains"));
    assert_eq!(cache.len().await.expect("len"), 4);
    assert!(cache.size_bytes().await.expect("size") > 0);
    assert_eq!(cache.delete_url(&origin.url("/a")).await.expect("delete"), 1);
    // `/etag` (no-cache) and `/last-modified` (max-age=0) are stored already stale.
    assert_eq!(cache.delete_expired().await.expect("expired"), 2);
    assert_eq!(cache.urls().await.expect("urls"), [origin.url("/b?x=1")]);
    assert_eq!(
        cache.delete_older_than(Duration::from_secs(3600)).await.expect("older"),
        0
    );
    assert_eq!(cache.delete_older_than(Duration::ZERO).await.expect("older"), 1);
    get(&client, &origin.url("/a")).await;
    cache.clear().await.expect("clear");
    assert!(cache.is_empty().await.expect("empty"));
    assert!(matches!(
        cache.delete_url("not a url").await,
        Err(edgecache::Error::InvalidUrl { .. })
    ));
}

#[tokio::test]
async fn a_corrupt_entry_is_a_miss_and_is_replaced() {
    let origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("cache.sqlite");
    let cache = CacheMiddleware::builder()
        .store(SqliteStore::open(&path).expect("open").without_memory_tier())
        .build()
        .expect("cache");
    let client = client(&cache);
    get(&client, &origin.url("/plain")).await;
    rusqlite::Connection::open(&path)
        .expect("open")
        .execute_batch("UPDATE responses SET value = x'00ff00ff'")
        .expect("corrupt");
    assert_eq!(
        get(&client, &origin.url("/plain")).await,
        ("MISS".into(), "GET /plain #2".into())
    );
    assert_eq!(
        get(&client, &origin.url("/plain")).await,
        ("HIT".into(), "GET /plain #2".into())
    );
}

#[tokio::test]
async fn tags_from_the_header_and_the_request_delete_together() {
    let origin = Origin::start().await;
    let cache = memory_cache();
    let client = client(&cache);
    get(&client, &origin.url("/tagged/product-1,sale")).await;
    get(&client, &origin.url("/tagged/product-2")).await;
    let tagged = client
        .get(origin.url("/plain"))
        .with_extension(edgecache::CacheTags(vec!["sale".into()]));
    tagged.send().await.expect("request");
    assert_eq!(cache.len().await.expect("len"), 3);

    assert_eq!(
        cache.delete_tag("sale").await.expect("delete tag"),
        2,
        "header and extension tags alike"
    );
    assert_eq!(get(&client, &origin.url("/plain")).await.0, "MISS");
    assert_eq!(
        get(&client, &origin.url("/tagged/product-2")).await.0,
        "HIT",
        "other tags stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_unknown_length_streams_at_once_and_is_stored_when_it_ends() {
    const SIZE: usize = 300_000;
    let origin = Origin::start().await;
    let cache = memory_cache();
    let client = client(&cache);
    let url = origin.url(&format!("/trickle/{SIZE}"));

    // The origin holds the rest of the body back: the first part must reach
    // the caller anyway, not wait for the whole body to be cached.
    let mut response = tokio::time::timeout(Duration::from_secs(10), client.get(&url).send())
        .await
        .expect("the response starts before the body ends")
        .expect("request");
    assert_eq!(response.headers()["x-cache"], "MISS");
    let mut received = 0;
    while received < 128 * 1024 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("the first part arrives while the origin waits")
            .expect("chunk")
            .expect("not the end yet");
        received += chunk.len();
    }
    origin.open_gate();
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        received += chunk.len();
    }
    assert_eq!(received, SIZE);

    // Once the body has ended, it is stored whole.
    let start = std::time::Instant::now();
    loop {
        let response = client.get(&url).send().await.expect("request");
        let hit = response.headers()["x-cache"] == "HIT";
        let body = response.bytes().await.expect("body");
        if hit {
            assert_eq!(body.len(), SIZE);
            assert!(body.starts_with(b"xxxx") && body.ends_with(b"yyyy"));
            break;
        }
        origin.open_gate();
        assert!(start.elapsed() < Duration::from_secs(10), "never stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
