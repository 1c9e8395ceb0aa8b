//! Properties of cache keys and of the entry decoder, over generated inputs.

use bytes::Bytes;
use edgecache::cache::entry::StoredResponse;
use edgecache::store::MemoryStore;
use edgecache::{CacheKey, CacheMiddleware, RequestHead};
use http::{HeaderMap, Method};
use proptest::prelude::*;

fn cache() -> CacheMiddleware {
    CacheMiddleware::builder()
        .store(MemoryStore::new(1 << 20))
        .build()
        .expect("cache")
}

fn key(cache: &CacheMiddleware, method: &Method, url: &str, headers: &HeaderMap, body: &[u8]) -> CacheKey {
    let url = url::Url::parse(url).expect("generated URLs parse");
    block_on(cache.key_for(&RequestHead {
        method,
        url: &url,
        headers,
        body,
    }))
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// `scheme://host[:port]/path?query` with the pairs in the given order.
fn url(scheme: &str, host: &str, port: Option<u16>, path: &str, pairs: &[(String, String)]) -> String {
    let port = port.map(|port| format!(":{port}")).unwrap_or_default();
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.extend_pairs(pairs);
    let query = query.finish();
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{scheme}://{host}{port}/{path}{query}")
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    // Names start with `p`, so none is ignored by default (`api_key`, …).
    prop::collection::vec(("p[a-z]{0,5}", "[a-zA-Z0-9 %+&=/.~-]{0,8}"), 0..8)
}

proptest! {
    #[test]
    fn equivalent_urls_share_a_key(
        host in "[a-z]{1,10}\\.(com|org)",
        path in "[a-z]{0,8}",
        pairs in pairs(),
        https in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let cache = cache();
        let headers = HeaderMap::new();
        let scheme = if https { "https" } else { "http" };
        let default_port = if https { 443 } else { 80 };
        let mut shuffled = pairs.clone();
        // A deterministic shuffle from the seed.
        for index in (1..shuffled.len()).rev() {
            shuffled.swap(index, (seed as usize).wrapping_mul(index + 7) % (index + 1));
        }
        let plain = key(&cache, &Method::GET, &url(scheme, &host, None, &path, &pairs), &headers, b"");
        let equivalent = url(&scheme.to_uppercase(), &host.to_uppercase(), Some(default_port), &path, &shuffled);
        prop_assert_eq!(plain, key(&cache, &Method::GET, &equivalent, &headers, b""));
    }

    #[test]
    fn different_requests_get_different_keys(
        host in "[a-z]{1,10}\\.com",
        pairs in pairs().prop_filter("one pair at least", |pairs| !pairs.is_empty()),
        which in any::<prop::sample::Index>(),
    ) {
        let cache = cache();
        let headers = HeaderMap::new();
        let base = key(&cache, &Method::GET, &url("https", &host, None, "p", &pairs), &headers, b"");

        let mut changed = pairs.clone();
        changed[which.index(pairs.len())].1.push('x');
        let changed = key(&cache, &Method::GET, &url("https", &host, None, "p", &changed), &headers, b"");
        prop_assert_ne!(&base, &changed, "a parameter value");

        let mut duplicated = pairs.clone();
        duplicated.push(pairs[which.index(pairs.len())].clone());
        let duplicated = key(&cache, &Method::GET, &url("https", &host, None, "p", &duplicated), &headers, b"");
        prop_assert_ne!(&base, &duplicated, "a duplicated parameter");

        let head = key(&cache, &Method::HEAD, &url("https", &host, None, "p", &pairs), &headers, b"");
        prop_assert_ne!(&base, &head, "the method");
    }

    #[test]
    fn no_url_header_or_body_makes_key_computation_panic(
        url in "[a-zA-Z][a-zA-Z0-9+.-]{0,6}://[^\\s]{0,40}",
        header in "[\\x20-\\x7e]{0,30}",
        body in prop::collection::vec(any::<u8>(), 0..64),
        json in any::<bool>(),
    ) {
        let Ok(url) = url::Url::parse(&url) else { return Ok(()) };
        let mut headers = HeaderMap::new();
        if let Ok(value) = header.parse() {
            headers.insert("x-anything", value);
        }
        let content_type = if json { "application/json" } else { "application/x-www-form-urlencoded" };
        headers.insert("content-type", content_type.parse().expect("static"));
        let cache = CacheMiddleware::builder()
            .store(MemoryStore::new(1 << 20))
            .match_headers(edgecache::MatchHeaders::All)
            .build()
            .expect("cache");
        block_on(cache.key_for(&RequestHead { method: &Method::POST, url: &url, headers: &headers, body: &body }));
    }

    #[test]
    fn the_entry_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        let mut bytes = bytes;
        if magic && bytes.len() >= 6 {
            // Get past the magic and version checks often enough to matter.
            bytes[..6].copy_from_slice(b"edgc\x02\x00");
        }
        let _ = StoredResponse::decode(&Bytes::from(bytes));
    }
}
