//! Cache keys: what makes two requests "the same request".
//!
//! A key is a digest of the upper-cased method, the normalized URL, the
//! matched request headers, a keyed digest of the request's credentials and
//! a canonical form of the body.
//!
//! Two lists of parameter names shape it:
//!
//! * **Credentials** ([`DEFAULT_CREDENTIAL_PARAMETERS`], and always the URL's
//!   userinfo) separate entries: requests with different tokens never share
//!   one. Their values are never stored or logged; the key holds only an
//!   HMAC of them, keyed with a secret the store keeps (or the cache's
//!   `secret_key`), so a weak password cannot be recovered by guessing.
//! * **Ignored parameters** (none by default) are left out of the key and out
//!   of what is stored: cache-busters and tracking parameters, where sharing
//!   an entry is the point. A name listed there is ignored even if it is a
//!   default credential.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use hmac::Mac;
use http::{HeaderMap, HeaderName, Method};
use sha2::{Digest, Sha256};
use smallvec::SmallVec;
use url::Url;

mod form;
mod secret;

use self::form::{FormPart, decode_form};
pub use self::secret::KeySecret;
use self::secret::{Credentials, length_prefixed_mac, truncate};

/// Parameters that identify a user by default: they separate cache entries
/// (through a keyed digest) and are never stored or logged.
///
/// Query and body parameter names match exactly; header names match
/// case-insensitively. The URL's userinfo (`user:password@`) is always
/// treated as a credential.
pub const DEFAULT_CREDENTIAL_PARAMETERS: &[&str] = &[
    "Authorization",
    "Proxy-Authorization",
    "Cookie",
    "X-API-Key",
    "access_token",
    "api_key",
    "apikey",
];

thread_local! {
    /// The buffer [`KeyRules::key`] normalizes URLs into, reused.
    static NORMALIZED: Cell<String> = const { Cell::new(String::new()) };
}

/// The largest buffer kept for the next key: a huge URL's is let go.
const KEPT_BUFFER: usize = 4096;

/// What logs and errors show in place of a secret.
pub const REDACTED: &str = "REDACTED";

/// The identity of a cached response.
#[derive(Clone)]
pub struct CacheKey(KeyText);

/// A computed key is held inline: the hit path allocates nothing for it.
#[derive(Clone)]
enum KeyText {
    Digest([u8; 32]),
    Custom(Arc<str>),
}

impl CacheKey {
    /// Wraps a key computed elsewhere (for example by a custom key function).
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        Self(KeyText::Custom(key.into()))
    }

    /// The key as text, as stores keep it.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always ASCII hex digits.
            KeyText::Digest(digits) => std::str::from_utf8(digits).unwrap_or_default(),
            KeyText::Custom(text) => text,
        }
    }

    fn from_digest(digest: [u8; 32]) -> Self {
        let mut digits = [0u8; 32];
        crate::digest::hex_lower_into(&truncate(digest), &mut digits);
        Self(KeyText::Digest(digits))
    }

    /// The key of one `Vary` variant of this key's responses.
    pub fn variant(&self, vary_digest: &[u8; 16]) -> CacheKey {
        let mut hasher = Sha256::new();
        hasher.update(self.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(vary_digest);
        CacheKey::from_digest(hasher.finalize().into())
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for CacheKey {}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.as_str())
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
pub type KeyFn = Arc<dyn Fn(&RequestHead<'_>) -> String + Send + Sync>;

/// A set of parameter names: exact for query and body parameters,
/// case-insensitive for headers.
#[derive(Clone, Default)]
struct Names {
    exact: Vec<String>,
    headers: Vec<HeaderName>,
}

impl Names {
    fn new(names: impl IntoIterator<Item = String>) -> Self {
        let exact: Vec<String> = names.into_iter().collect();
        let headers = exact
            .iter()
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        Self { exact, headers }
    }

    fn contains(&self, name: &[u8]) -> bool {
        self.exact.iter().any(|exact| exact.as_bytes() == name)
    }

    fn contains_header(&self, name: &HeaderName) -> bool {
        self.headers.contains(name)
    }
}

/// How keys are computed: the part of the cache configuration that concerns
/// request identity.
#[derive(Clone, Default)]
pub struct KeyRules {
    credentials: Names,
    ignored: Names,
    /// Which request headers take part in keys.
    pub match_headers: MatchHeaders,
    /// A user's own key function, which replaces the computed key.
    pub key_fn: Option<KeyFn>,
}

/// What a query parameter is to the key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Plain,
    Credential,
    Ignored,
}

impl KeyRules {
    /// `ignored` wins over `credentials`: a name in both is ignored.
    pub fn new(
        credentials: Vec<String>,
        ignored: Vec<String>,
        match_headers: MatchHeaders,
        key_fn: Option<KeyFn>,
    ) -> Self {
        let ignored = Names::new(ignored);
        let mut credentials = Names::new(credentials);
        credentials.headers.retain(|name| !ignored.contains_header(name));
        Self {
            credentials,
            ignored,
            match_headers,
            key_fn,
        }
    }

    fn role(&self, name: &[u8]) -> Role {
        if self.ignored.contains(name) {
            Role::Ignored
        } else if self.credentials.contains(name) {
            Role::Credential
        } else {
            Role::Plain
        }
    }

    /// Whether a request header is left out of keys and stores.
    pub fn is_ignored_header(&self, name: &HeaderName) -> bool {
        self.ignored.contains_header(name)
    }

    /// Whether a query or body parameter carries a credential.
    pub fn is_credential_parameter(&self, name: &str) -> bool {
        self.role(name.as_bytes()) == Role::Credential
    }

    /// Whether a request header carries a credential.
    pub fn is_credential_header(&self, name: &HeaderName) -> bool {
        self.credentials.contains_header(name)
    }

    /// The URL as keys and stores see it: lower-case scheme and host, default
    /// port dropped, empty path as `/`, no userinfo, no fragment, query
    /// parameters sorted by name then value (duplicates kept) and
    /// form-encoded canonically, credential and ignored parameters removed.
    pub fn normalize_url(&self, url: &Url) -> String {
        let mut normalized = String::with_capacity(url.as_str().len() + 8);
        self.normalize_into(url, &mut normalized, |_, _| {});
        normalized
    }

    /// Appends `url` normalized to `normalized`, and hands each credential
    /// pair to `credential`.
    fn normalize_into(&self, url: &Url, normalized: &mut String, mut credential: impl FnMut(&[u8], &[u8])) {
        // `Url` already lower-cases scheme and host, drops default ports and
        // turns an empty path into `/`; userinfo is left out here, and the
        // query is canonicalized below.
        normalized.push_str(&url[..url::Position::BeforeUsername]);
        normalized.push_str(&url[url::Position::BeforeHost..url::Position::AfterPath]);
        let Some(query) = url.query() else { return };
        // Most queries have a few parameters: sort them on the stack.
        let mut pairs: SmallVec<[(FormPart<'_>, FormPart<'_>); 16]> = SmallVec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = FormPart::decode(name);
            match self.role(&name.bytes) {
                Role::Plain => pairs.push((name, FormPart::decode(value))),
                Role::Credential => credential(&name.bytes, &FormPart::decode(value).bytes),
                Role::Ignored => {}
            }
        }
        // Names mostly differ in their first byte: compare it inline before
        // calling into a full comparison.
        let quick = |a: &[u8], b: &[u8]| match (a.first(), b.first()) {
            (Some(x), Some(y)) if x != y => x.cmp(y),
            _ => a.cmp(b),
        };
        pairs.sort_unstable_by(|(a_name, a_value), (b_name, b_value)| {
            quick(&a_name.bytes, &b_name.bytes).then_with(|| quick(&a_value.bytes, &b_value.bytes))
        });
        for (index, (name, value)) in pairs.iter().enumerate() {
            normalized.push(if index == 0 { '?' } else { '&' });
            name.encode_into(normalized);
            normalized.push('=');
            value.encode_into(normalized);
        }
    }

    /// The URL as logs and errors show it: no userinfo, and the values of
    /// credential and ignored parameters replaced by `REDACTED`.
    pub fn redact_url(&self, url: &Url) -> String {
        let mut redacted = String::with_capacity(url.as_str().len());
        redacted.push_str(&url[..url::Position::BeforeUsername]);
        redacted.push_str(&url[url::Position::BeforeHost..url::Position::AfterPath]);
        if let Some(query) = url.query() {
            redacted.push('?');
            for (index, pair) in query.split('&').enumerate() {
                if index > 0 {
                    redacted.push('&');
                }
                let (name, _) = pair.split_once('=').unwrap_or((pair, ""));
                if self.role(&FormPart::decode(name).bytes) == Role::Plain {
                    redacted.push_str(pair);
                } else {
                    redacted.push_str(name);
                    redacted.push('=');
                    redacted.push_str(REDACTED);
                }
            }
        }
        redacted
    }

    /// Computes the key of a request; `secret` keys the digest of its
    /// credentials.
    pub fn key(&self, head: &RequestHead<'_>, secret: &KeySecret) -> CacheKey {
        if let Some(key_fn) = &self.key_fn {
            return CacheKey::new(key_fn(head));
        }
        let mut credentials = Credentials::new(secret);
        let mut hasher = Sha256::new();
        let method = head.method.as_str();
        if method.bytes().any(|byte| byte.is_ascii_lowercase()) {
            hasher.update(method.to_ascii_uppercase());
        } else {
            hasher.update(method);
        }
        hasher.update([0]);
        // The normalized URL is only hashed: it goes through a buffer this
        // thread keeps, so keying a request allocates nothing for it.
        let mut normalized = NORMALIZED.take();
        normalized.clear();
        self.normalize_into(head.url, &mut normalized, |name, value| {
            credentials.add(b'q', name, value)
        });
        hasher.update(&normalized);
        if normalized.capacity() <= KEPT_BUFFER {
            NORMALIZED.set(normalized);
        }
        hasher.update([0]);
        self.hash_headers(head.headers, &mut hasher);
        hasher.update([0]);
        let (user, password) = (head.url.username(), head.url.password());
        if !user.is_empty() || password.is_some() {
            credentials.add(b'u', user.as_bytes(), password.unwrap_or_default().as_bytes());
        }
        // A request has few headers: scanning them beats hashing every
        // credential name for a lookup.
        for (name, value) in head.headers {
            if self.credentials.contains_header(name) {
                credentials.add(b'h', name.as_str().as_bytes(), value.as_bytes());
            }
        }
        // The body goes last, so it needs no terminator; its credentials are
        // collected first.
        let body = (!head.body.is_empty()).then(|| self.canonical_body(head.headers, head.body, &mut credentials));
        match credentials.finish() {
            Some(digest) => {
                hasher.update([1]);
                hasher.update(digest);
            }
            None => hasher.update([0]),
        }
        if let Some(body) = body {
            hasher.update(&*body);
        }
        CacheKey::from_digest(hasher.finalize().into())
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
        // Credential headers are keyed through their digest, never hashed plainly.
        let hashed = |name: &&HeaderName| !self.is_ignored_header(name) && !self.is_credential_header(name);
        match &self.match_headers {
            MatchHeaders::None => {}
            MatchHeaders::List(names) => names.iter().filter(hashed).for_each(&mut hash_one),
            MatchHeaders::All => {
                let mut names: Vec<_> = headers.keys().filter(hashed).collect();
                names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                names.dedup();
                names.into_iter().for_each(hash_one);
            }
        }
    }

    /// A canonical form of the body: JSON with sorted keys, forms with
    /// sorted pairs, ignored parameters left out and credentials handed to
    /// the credential digest; anything else as is.
    fn canonical_body<'b>(
        &self,
        headers: &HeaderMap,
        body: &'b [u8],
        credentials: &mut Credentials<'_>,
    ) -> Cow<'b, [u8]> {
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .map(|value| value.as_bytes())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if content_type.windows(4).any(|window| window == b"json") {
            if let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(body) {
                if let Some(object) = json.as_object_mut() {
                    object.retain(|name, value| match self.role(name.as_bytes()) {
                        Role::Plain => true,
                        Role::Ignored => false,
                        Role::Credential => {
                            credentials.add(b'j', name.as_bytes(), value.to_string().as_bytes());
                            false
                        }
                    });
                }
                // serde_json's map is ordered by key, so this is canonical.
                let mut canonical = b"j".to_vec();
                canonical.extend_from_slice(json.to_string().as_bytes());
                return Cow::Owned(canonical);
            }
        } else if content_type.starts_with(b"application/x-www-form-urlencoded") {
            let mut pairs = Vec::new();
            for pair in body.split(|&byte| byte == b'&').filter(|pair| !pair.is_empty()) {
                let split = pair.iter().position(|&byte| byte == b'=');
                let (name, value) = match split {
                    Some(at) => (&pair[..at], &pair[at + 1..]),
                    None => (pair, &b""[..]),
                };
                let name = decode_form(name);
                match self.role(&name) {
                    Role::Plain => pairs.push((name, decode_form(value))),
                    Role::Credential => credentials.add(b'f', &name, &decode_form(value)),
                    Role::Ignored => {}
                }
            }
            pairs.sort();
            let mut canonical = b"f".to_vec();
            for (name, value) in pairs {
                length_prefixed(&mut canonical, &name);
                length_prefixed(&mut canonical, &value);
            }
            return Cow::Owned(canonical);
        }
        let mut raw = Vec::with_capacity(body.len() + 1);
        raw.push(b'r');
        raw.extend_from_slice(body);
        Cow::Owned(raw)
    }

    /// A keyed digest of the request's values for the headers a response
    /// varies on. Values are compared as lists: whitespace around commas and
    /// the split into field lines don't matter, nor does case in the
    /// `Accept*` headers, whose values are case-insensitive.
    pub fn vary_digest(names: &[String], headers: &HeaderMap, secret: &KeySecret) -> [u8; 16] {
        let mut mac = secret.mac();
        mac.update(b"vary");
        let mut normalized = Vec::new();
        for name in names {
            normalized.clear();
            let fold_case = name.starts_with("accept");
            for value in headers.get_all(name.as_str()) {
                for member in value.as_bytes().split(|&byte| byte == b',') {
                    let member = member.trim_ascii();
                    if member.is_empty() {
                        continue;
                    }
                    if !normalized.is_empty() {
                        normalized.push(b',');
                    }
                    if fold_case {
                        normalized.extend(member.iter().map(u8::to_ascii_lowercase));
                    } else {
                        normalized.extend_from_slice(member);
                    }
                }
            }
            length_prefixed_mac(&mut mac, name.as_bytes());
            length_prefixed_mac(&mut mac, &normalized);
        }
        truncate(mac.finalize().into_bytes().into())
    }
}

fn length_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}
