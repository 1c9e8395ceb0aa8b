//! Cache keys: what makes two requests "the same request".
//!
//! A key is a digest of the upper-cased method, the normalized URL, the
//! matched request headers and a canonical form of the body. Ignored
//! parameters take no part in it, and they are removed from the URL that is
//! stored beside the entry, so secrets never reach a store.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Method};
use sha2::{Digest, Sha256};
use url::Url;

/// Parameters ignored by default: removed from keys and never stored.
///
/// Query and body parameter names match exactly; header names match
/// case-insensitively.
pub const DEFAULT_IGNORED_PARAMETERS: &[&str] = &[
    "Authorization",
    "Proxy-Authorization",
    "X-API-Key",
    "access_token",
    "api_key",
    "apikey",
];

/// The identity of a cached response.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Arc<str>);

impl CacheKey {
    /// Wraps a key computed elsewhere (for example by a custom key function).
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        Self(key.into())
    }

    /// The key as text, as stores keep it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.0)
    }
}

/// The parts of a request that decide its cache key, as a custom key
/// function sees them.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The absolute request URL.
    pub url: &'a Url,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request body (empty when there is none).
    pub body: &'a [u8],
}

/// Which request headers take part in the key.
#[derive(Debug, Clone, Default)]
pub enum MatchHeaders {
    /// No headers (the default); a response's `Vary` still applies.
    #[default]
    None,
    /// Every request header except the ignored ones.
    All,
    /// These headers (names are case-insensitive).
    List(Vec<http::HeaderName>),
}

/// A user-supplied function that replaces the built-in key computation.
pub(crate) type KeyFn = Arc<dyn Fn(&RequestHead<'_>) -> String + Send + Sync>;

/// How keys are computed: the part of the cache configuration that concerns
/// request identity.
#[derive(Clone, Default)]
pub(crate) struct KeyRules {
    /// Query/body parameter names, matched exactly.
    pub(crate) ignored: Vec<String>,
    /// The same names, lower-cased, for header matching.
    pub(crate) ignored_headers: Vec<String>,
    pub(crate) match_headers: MatchHeaders,
    pub(crate) key_fn: Option<KeyFn>,
}

impl KeyRules {
    pub(crate) fn new(ignored: Vec<String>, match_headers: MatchHeaders, key_fn: Option<KeyFn>) -> Self {
        let ignored_headers = ignored.iter().map(|name| name.to_ascii_lowercase()).collect();
        Self {
            ignored,
            ignored_headers,
            match_headers,
            key_fn,
        }
    }

    fn is_ignored_param(&self, name: &str) -> bool {
        self.ignored.iter().any(|ignored| ignored == name)
    }

    pub(crate) fn is_ignored_header(&self, name: &http::HeaderName) -> bool {
        self.ignored_headers.iter().any(|ignored| ignored == name.as_str())
    }

    /// The URL as keys and stores see it: lower-case scheme and host, default
    /// port dropped, empty path as `/`, no fragment, query parameters sorted
    /// by name then value (duplicates kept) and form-encoded canonically,
    /// ignored parameters removed.
    pub(crate) fn normalize_url(&self, url: &Url) -> String {
        // `Url` already lower-cases scheme and host, drops default ports and
        // turns an empty path into `/`; what is left is the query.
        let base = &url[..url::Position::AfterPath];
        let mut normalized = String::with_capacity(url.as_str().len() + 8);
        normalized.push_str(base);
        let Some(query) = url.query() else { return normalized };
        let mut pairs: Vec<(FormPart<'_>, FormPart<'_>)> = Vec::with_capacity(16);
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = FormPart::decode(name);
            if !self.is_ignored_param(&name.text) {
                pairs.push((name, FormPart::decode(value)));
            }
        }
        // Names mostly differ in their first byte: compare it inline before
        // calling into a full comparison.
        let quick = |a: &str, b: &str| match (a.as_bytes().first(), b.as_bytes().first()) {
            (Some(x), Some(y)) if x != y => x.cmp(y),
            _ => a.cmp(b),
        };
        pairs.sort_unstable_by(|(a_name, a_value), (b_name, b_value)| {
            quick(&a_name.text, &b_name.text).then_with(|| quick(&a_value.text, &b_value.text))
        });
        for (index, (name, value)) in pairs.iter().enumerate() {
            normalized.push(if index == 0 { '?' } else { '&' });
            name.encode_into(&mut normalized);
            normalized.push('=');
            value.encode_into(&mut normalized);
        }
        normalized
    }

    /// Computes the key of a request.
    pub(crate) fn key(&self, head: &RequestHead<'_>) -> CacheKey {
        if let Some(key_fn) = &self.key_fn {
            return CacheKey::new(key_fn(head));
        }
        let mut hasher = Sha256::new();
        let method = head.method.as_str();
        if method.bytes().any(|byte| byte.is_ascii_lowercase()) {
            hasher.update(method.to_ascii_uppercase());
        } else {
            hasher.update(method);
        }
        hasher.update([0]);
        hasher.update(self.normalize_url(head.url));
        hasher.update([0]);
        self.hash_headers(head.headers, &mut hasher);
        hasher.update([0]);
        if !head.body.is_empty() {
            self.hash_body(head.headers, head.body, &mut hasher);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        let mut short = [0; 16];
        short.copy_from_slice(&digest[..16]);
        // 128 bits: collision-free for any realistic cache, half the text.
        CacheKey(hex_lower(&short))
    }

    fn hash_headers(&self, headers: &HeaderMap, hasher: &mut Sha256) {
        let mut hash_one = |name: &http::HeaderName| {
            for value in headers.get_all(name) {
                hasher.update(name.as_str());
                hasher.update(b":");
                hasher.update(value.as_bytes());
                hasher.update(b"\n");
            }
        };
        match &self.match_headers {
            MatchHeaders::None => {}
            MatchHeaders::List(names) => names.iter().for_each(&mut hash_one),
            MatchHeaders::All => {
                let mut names: Vec<_> = headers.keys().filter(|name| !self.is_ignored_header(name)).collect();
                names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                names.into_iter().for_each(hash_one);
            }
        }
    }

    /// Hashes a canonical form of the body: JSON with sorted keys, forms with
    /// sorted pairs, ignored parameters left out; anything else as is.
    fn hash_body(&self, headers: &HeaderMap, body: &[u8], hasher: &mut Sha256) {
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.contains("json") {
            if let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(body) {
                if let Some(object) = json.as_object_mut() {
                    object.retain(|name, _| !self.is_ignored_param(name));
                }
                // serde_json's map is ordered by key, so this is canonical.
                hasher.update(json.to_string());
                return;
            }
        } else if content_type.starts_with("application/x-www-form-urlencoded") {
            let mut pairs: Vec<_> = url::form_urlencoded::parse(body)
                .filter(|(name, _)| !self.is_ignored_param(name))
                .collect();
            pairs.sort();
            for (name, value) in pairs {
                hasher.update(name.as_bytes());
                hasher.update(b"=");
                hasher.update(value.as_bytes());
                hasher.update(b"&");
            }
            return;
        }
        hasher.update(body);
    }

    /// A digest of the request's values for the headers a response varies on.
    pub(crate) fn vary_digest(names: &[String], headers: &HeaderMap) -> [u8; 16] {
        let mut hasher = Sha256::new();
        for name in names {
            for value in headers.get_all(name.as_str()) {
                hasher.update(value.as_bytes());
                hasher.update(b"\n");
            }
            hasher.update([0]);
        }
        let digest = hasher.finalize();
        let mut short = [0; 16];
        short.copy_from_slice(&digest[..16]);
        short
    }
}

/// Bytes the form encoding keeps as they are: ASCII letters, digits, `*-._`.
const KEPT_AS_IS: [bool; 256] = {
    let mut kept = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        kept[byte] = b.is_ascii_alphanumeric() || b == b'*' || b == b'-' || b == b'.' || b == b'_';
        byte += 1;
    }
    kept
};

/// One decoded `application/x-www-form-urlencoded` name or value.
struct FormPart<'a> {
    text: Cow<'a, str>,
    /// Whether `text` holds only bytes the form encoding keeps as they are,
    /// so it is its own canonical encoding (the common case).
    plain: bool,
}

impl<'a> FormPart<'a> {
    fn decode(raw: &'a str) -> Self {
        if raw.bytes().all(|byte| KEPT_AS_IS[usize::from(byte)]) {
            return FormPart {
                text: Cow::Borrowed(raw),
                plain: true,
            };
        }
        let text = if raw.bytes().any(|byte| byte == b'%' || byte == b'+') {
            let plus_as_space = raw.replace('+', " ");
            Cow::Owned(
                percent_encoding::percent_decode_str(&plus_as_space)
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        } else {
            Cow::Borrowed(raw)
        };
        FormPart { text, plain: false }
    }

    fn encode_into(&self, out: &mut String) {
        if self.plain {
            out.push_str(&self.text);
        } else {
            out.extend(url::form_urlencoded::byte_serialize(self.text.as_bytes()));
        }
    }
}

/// Lower-case hex of a 16-byte digest, allocated once, straight into the key's `Arc`.
fn hex_lower(bytes: &[u8; 16]) -> Arc<str> {
    let mut text = [0u8; 32];
    hex_lower_into(bytes, &mut text);
    Arc::from(std::str::from_utf8(&text).unwrap_or_default())
}

/// Writes the lower-case hex digits of `bytes` into `out`, which is twice as long.
pub(crate) fn hex_lower_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> KeyRules {
        KeyRules::new(
            DEFAULT_IGNORED_PARAMETERS.iter().map(|name| name.to_string()).collect(),
            MatchHeaders::None,
            None,
        )
    }

    fn normalize(url: &str) -> String {
        rules().normalize_url(&Url::parse(url).expect("test URL"))
    }

    #[test]
    fn normalization_matches_what_users_expect() {
        assert_eq!(normalize("HTTP://Example.COM:80"), "http://example.com/");
        assert_eq!(normalize("https://example.com:443/a#frag"), "https://example.com/a");
        assert_eq!(normalize("https://example.com:8443/a"), "https://example.com:8443/a");
        assert_eq!(normalize("http://e.com/p?b=2&a=1&a=0"), "http://e.com/p?a=0&a=1&b=2");
        assert_eq!(normalize("http://e.com/p?api_key=s3cret&x=1"), "http://e.com/p?x=1");
        assert_eq!(normalize("http://e.com/p?api_key=s3cret"), "http://e.com/p");
        assert_eq!(normalize("http://e.com/p?"), "http://e.com/p");
        assert_eq!(
            normalize("http://e.com/p?q=a%20b&r=a+b&s=a,b"),
            "http://e.com/p?q=a+b&r=a+b&s=a%2Cb"
        );
        assert_eq!(normalize("http://e.com/p?flag&&x="), "http://e.com/p?flag=&x=");
        assert_eq!(normalize("http://e.com/p?caf%C3%A9=1"), "http://e.com/p?caf%C3%A9=1");
        assert_eq!(
            normalize("http://e.com/p?api%5Fkey=s3cret"),
            "http://e.com/p",
            "ignored names match decoded"
        );
    }

    fn key_of(method: &str, url: &str, headers: &HeaderMap, body: &[u8]) -> CacheKey {
        let rules = rules();
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let url = Url::parse(url).expect("url");
        let head = RequestHead {
            method: &method,
            url: &url,
            headers,
            body,
        };
        rules.key(&head)
    }

    #[test]
    fn json_bodies_are_keyed_by_content_not_key_order() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, "application/json".parse().expect("value"));
        let a = key_of("POST", "http://e.com/", &headers, br#"{"a":1,"b":2,"api_key":"x"}"#);
        let b = key_of("POST", "http://e.com/", &headers, br#"{"b":2, "a":1,"api_key":"y"}"#);
        let c = key_of("POST", "http://e.com/", &headers, br#"{"a":1,"b":3}"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, key_of("PUT", "http://e.com/", &headers, br#"{"a":1,"b":2}"#));
    }

    #[test]
    fn methods_are_compared_upper_case() {
        let headers = HeaderMap::new();
        assert_eq!(
            key_of("get", "http://e.com/", &headers, b""),
            key_of("GET", "http://e.com/", &headers, b"")
        );
    }
}
