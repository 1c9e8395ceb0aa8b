//! Validating, invalidating and saying what happened (RFC 9111 §4.3, §4.4; RFC 9211): `HEAD`, unsafe requests, conditionals, weak tags, `Cache-Status`.

use super::*;

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
