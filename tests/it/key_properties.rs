//! Properties of cache keys and of the entry decoder, over generated inputs.

use bytes::Bytes;
use edgecache::store::MemoryStore;
use edgecache::store::entry::StoredResponse;
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

/// A path whose bytes are all percent-encoded but ASCII letters and digits.
fn encode_path(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&byte| {
            if byte.is_ascii_alphanumeric() {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// One form-encoded name or value, spelled one of several equivalent ways
/// as `style` picks: letters raw or escaped, space as `+` or `%20`, hex in
/// either case.
fn encode_form(bytes: &[u8], style: u64) -> String {
    bytes
        .iter()
        .enumerate()
        .map(|(index, &byte)| {
            let bit = |n: u64| (style.rotate_left((index as u32 * 3 + n as u32) % 64) & 1) == 1;
            if byte.is_ascii_alphanumeric() && bit(0) {
                char::from(byte).to_string()
            } else if byte == b' ' && bit(1) {
                "+".to_owned()
            } else if bit(2) {
                format!("%{byte:02x}")
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// A URL for a path and query pairs given as raw bytes.
fn byte_url(path: &[u8], pairs: &[(Vec<u8>, Vec<u8>)], style: u64) -> String {
    let query: Vec<String> = pairs
        .iter()
        .enumerate()
        .map(|(index, (name, value))| {
            let style = style.rotate_left(index as u32 * 7);
            // Names start with `p`, so none is a default credential.
            format!("p{}={}", encode_form(name, style), encode_form(value, !style))
        })
        .collect();
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    format!("http://e.com/{}{query}", encode_path(path))
}

fn byte_pairs() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    prop::collection::vec(
        (
            prop::collection::vec(any::<u8>(), 0..6),
            prop::collection::vec(any::<u8>(), 0..6),
        ),
        0..5,
    )
}

proptest! {
    /// Issue: `?v=%FF` and `?v=%FE` shared a key (lossy UTF-8 decoding).
    /// Distinct requests, byte-wise, never share a key, including invalid
    /// UTF-8 in paths, names and values.
    #[test]
    fn keys_are_injective_over_raw_bytes(
        path_a in prop::collection::vec(any::<u8>(), 0..6),
        path_b in prop::collection::vec(any::<u8>(), 0..6),
        pairs_a in byte_pairs(),
        pairs_b in byte_pairs(),
        style_a in any::<u64>(),
        style_b in any::<u64>(),
    ) {
        let cache = cache();
        let headers = HeaderMap::new();
        let key_a = key(&cache, &Method::GET, &byte_url(&path_a, &pairs_a, style_a), &headers, b"");
        let key_b = key(&cache, &Method::GET, &byte_url(&path_b, &pairs_b, style_b), &headers, b"");
        let (mut sorted_a, mut sorted_b) = (pairs_a.clone(), pairs_b.clone());
        sorted_a.sort();
        sorted_b.sort();
        let same_request = path_a == path_b && sorted_a == sorted_b;
        prop_assert_eq!(key_a == key_b, same_request, "{} vs {}", byte_url(&path_a, &pairs_a, style_a), byte_url(&path_b, &pairs_b, style_b));

        // The same request spelled another way, pairs in another order.
        let mut reordered = pairs_a.clone();
        reordered.reverse();
        let respelled = key(&cache, &Method::GET, &byte_url(&path_a, &reordered, !style_a), &headers, b"");
        prop_assert_eq!(key_a, respelled);
    }
}

#[test]
fn invalid_utf8_escapes_the_issue_named_get_keys_of_their_own() {
    let cache = cache();
    let headers = HeaderMap::new();
    let key = |url: &str| key(&cache, &Method::GET, url, &headers, b"");
    for (a, b) in [
        ("http://e.com/p?v=%FF", "http://e.com/p?v=%FE"),
        ("http://e.com/p?v=%C3", "http://e.com/p?v=%EF%BF%BD"),
        ("http://e.com/p?%FF=1", "http://e.com/p?%80=1"),
    ] {
        assert_ne!(key(a), key(b), "{a} and {b}");
    }
}
