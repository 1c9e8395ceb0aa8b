//! No header, status or body an origin sends can panic the cache, and every
//! answer is a well-formed response: a property test through the tower layer.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use edgecache::CacheMiddleware;
use edgecache::store::MemoryStore;
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{Service, ServiceBuilder, ServiceExt};

/// Header names a cache reads, most of the time; anything else sometimes.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "Cache-Control", "cache-control", "CACHE-CONTROL", "Expires", "Age", "Date", "Vary", "ETag",
            "Last-Modified", "Content-Length", "Pragma", "Connection", "Location", "Content-Location",
            "Edge-Cache-Tag",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z][a-zA-Z0-9-]{0,12}",
    ]
}

/// Values that stress parsers: huge and negative numbers, odd spacing and
/// case, dates in and out of range, lists, junk.
fn header_value() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        Just("18446744073709551615".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("4294967296".to_owned()),
        Just("2147483648".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999999999".to_owned()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u32..100_000).prop_map(|n| n.to_string()),
    ];
    let directive = prop::sample::select(vec![
        "max-age",
        "s-maxage",
        "MAX-AGE",
        "No-CaChE",
        "no-store",
        "private",
        "public",
        "must-revalidate",
        "proxy-revalidate",
        "stale-while-revalidate",
        "stale-if-error",
        "immutable",
        "max-stale",
        "min-fresh",
        "only-if-cached",
    ]);
    prop_oneof![
        (directive.clone(), number.clone(), " {0,3}", " {0,3}").prop_map(|(d, n, a, b)| format!("{d}{a}={b}{n}")),
        prop::collection::vec((directive, prop::option::of(number.clone())), 1..4).prop_map(|list| {
            list.into_iter()
                .map(|(d, n)| n.map_or(d.to_owned(), |n| format!("{d}=\"{n}\"")))
                .collect::<Vec<_>>()
                .join(" , ")
        }),
        number.clone(),
        (number.clone(), number).prop_map(|(a, b)| format!("{a}, {b}")),
        Just("Thu, 01 Jan 1970 00:00:00 GMT".to_owned()),
        Just("Fri, 31 Dec 9999 23:59:59 GMT".to_owned()),
        Just("Sat,  28 Nov 2026 00:00:00 GMT".to_owned()),
        Just("Sunday, 06-Nov-94 08:49:37 GMT".to_owned()),
        Just("Sun Nov  6 08:49:37 1994".to_owned()),
        Just("*".to_owned()),
        Just("Accept, *".to_owned()),
        Just("W/\"x\"".to_owned()),
        "[ -~]{0,40}",
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((header_name(), header_value()), 0..8)
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        prop::sample::select(vec![
            200u16, 203, 204, 206, 300, 301, 302, 304, 307, 308, 404, 410, 500, 501, 503
        ]),
        100u16..1000,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_response_or_request_header_makes_the_cache_panic(
        response_headers in headers(),
        request_headers in headers(),
        status in status(),
        body in prop::collection::vec(any::<u8>(), 0..64),
        head in any::<bool>(),
        shared in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let cache = CacheMiddleware::builder()
                .store(MemoryStore::new(1 << 20))
                .shared(shared)
                .stale_while_revalidate(Duration::from_secs(1))
                .build()
                .expect("cache");
            let origin_body = Bytes::from(body);
            let origin = {
                let response_headers = response_headers.clone();
                let origin_body = origin_body.clone();
                tower::service_fn(move |_request: http::Request<Full<Bytes>>| {
                    let mut response = http::Response::builder().status(status);
                    for (name, value) in &response_headers {
                        if let (Ok(name), Ok(value)) =
                            (http::HeaderName::try_from(name.as_str()), http::HeaderValue::try_from(value.as_str()))
                        {
                            response = response.header(name, value);
                        }
                    }
                    let response = response.body(Full::new(origin_body.clone())).expect("valid status");
                    async move { Ok::<_, Infallible>(response) }
                })
            };
            let mut service = ServiceBuilder::new().layer(cache).service(origin);
            for round in 0..3 {
                let method = if head && round == 1 { http::Method::HEAD } else { http::Method::GET };
                let mut request = http::Request::builder().method(method.clone()).uri("http://origin.test/resource");
                for (name, value) in &request_headers {
                    if let (Ok(name), Ok(value)) =
                        (http::HeaderName::try_from(name.as_str()), http::HeaderValue::try_from(value.as_str()))
                    {
                        request = request.header(name, value);
                    }
                }
                let request = request.body(Full::default()).expect("request");
                let response = service.ready().await.expect("ready").call(request).await.expect("an answer");
                let (parts, body) = response.into_parts();
                let body = body.collect().await.expect("a body").to_bytes();
                prop_assert!(parts.headers.contains_key("x-cache"));
                prop_assert!(parts.headers.contains_key("cache-status"));
                let from_cache = parts.headers["x-cache"] != "MISS";
                if from_cache && let Some(age) = parts.headers.get("age") {
                    prop_assert!(age.to_str().expect("ascii").parse::<u64>().is_ok(), "Age is a number: {age:?}");
                }
                let answered = parts.status.as_u16();
                if method == http::Method::GET && answered != 304 && answered != 504 {
                    prop_assert_eq!(&body, &origin_body, "the origin's body, stored or not");
                }
            }
            Ok(())
        })?;
    }
}
