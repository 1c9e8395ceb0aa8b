//! What is stored (RFC 9111 §3, §4.1; RFC 9110 §15.1): `Vary`, `Connection`, statuses, variants, and a shared cache's rules.

use super::*;

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
