//! Configuring a cache.

use std::fmt;
use std::sync::Arc;

use http::{Method, StatusCode};

use std::time::Duration;

use crate::cache::policy::{ExpireAfter, RuleOptions, Rules, StaleWindow};
use crate::cache::{Engine, EngineOptions};
use crate::store::Store;
use crate::store::sign::EntrySigner;
use crate::{CacheMiddleware, Error};
use edgecache_base::key::{DEFAULT_CREDENTIAL_PARAMETERS, KeyRules, MatchHeaders, RequestHead};

/// Builds a [`CacheMiddleware`]. Every option has a default; see each method.
///
/// ```
/// use std::time::Duration;
/// use edgecache::{CacheMiddleware, ExpireAfter, store::MemoryStore};
///
/// let cache = CacheMiddleware::builder()
///     .store(MemoryStore::default())
///     .expire_after(Duration::from_secs(3600))
///     .urls_expire_after([("api.example.com/static", ExpireAfter::Never)])
///     .ignored_parameters(["utm_source", "_"])
///     .build()?;
/// # Ok::<(), edgecache::Error>(())
/// ```
#[must_use]
pub struct CacheBuilder {
    store: Option<Arc<dyn Store>>,
    expire_after: Option<ExpireAfter>,
    urls_expire_after: Vec<(String, ExpireAfter)>,
    allowed_methods: Vec<Method>,
    allowed_statuses: Option<Vec<u16>>,
    filter: Option<crate::cache::policy::ResponseFilter>,
    credential_parameters: Vec<String>,
    ignored_parameters: Vec<String>,
    match_headers: MatchHeaders,
    key_fn: Option<edgecache_base::key::KeyFn>,
    cache_control: bool,
    shared: bool,
    targeted_fields: Vec<http::HeaderName>,
    heuristic_max: Duration,
    x_cache_header: bool,
    cache_status_header: bool,
    max_body_size: usize,
    secret_key: Option<Vec<u8>>,
    old_secret_keys: Vec<Vec<u8>>,
    salt: Vec<u8>,
    stale_if_error: StaleWindow,
    stale_while_revalidate: StaleWindow,
    refresh_client: Option<reqwest::Client>,
    tag_headers: Vec<http::HeaderName>,
}

impl fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("expire_after", &self.expire_after)
            .field("urls_expire_after", &self.urls_expire_after)
            .field("allowed_methods", &self.allowed_methods)
            .field("allowed_statuses", &self.allowed_statuses)
            .field("credential_parameters", &self.credential_parameters)
            .field("ignored_parameters", &self.ignored_parameters)
            .field("match_headers", &self.match_headers)
            .field("cache_control", &self.cache_control)
            .field("shared", &self.shared)
            .field("targeted_fields", &self.targeted_fields)
            .field("heuristic_max", &self.heuristic_max)
            .field("max_body_size", &self.max_body_size)
            // Whether entries are signed, never the keys.
            .field("signed_entries", &self.secret_key.is_some())
            .field("stale_if_error", &self.stale_if_error)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .finish_non_exhaustive()
    }
}

impl Default for CacheBuilder {
    fn default() -> Self {
        Self {
            store: None,
            expire_after: None,
            urls_expire_after: Vec::new(),
            allowed_methods: vec![Method::GET, Method::HEAD],
            allowed_statuses: None,
            filter: None,
            credential_parameters: DEFAULT_CREDENTIAL_PARAMETERS
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
            ignored_parameters: Vec::new(),
            match_headers: MatchHeaders::None,
            key_fn: None,
            cache_control: true,
            shared: false,
            targeted_fields: crate::cache::targeted::default_targets(),
            heuristic_max: Duration::from_secs(86_400),
            x_cache_header: true,
            cache_status_header: true,
            max_body_size: 16 * 1024 * 1024,
            secret_key: None,
            old_secret_keys: Vec::new(),
            salt: Vec::new(),
            stale_if_error: StaleWindow::Never,
            stale_while_revalidate: StaleWindow::Never,
            refresh_client: None,
            tag_headers: edgecache_base::tags::default_tag_headers(),
        }
    }
}

impl CacheBuilder {
    /// Where entries are kept. Default: the [`Location`](crate::store::Location)
    /// in `$EDGECACHE_CACHE`, else a [`SqliteStore`](crate::store::SqliteStore)
    /// at `http.sqlite` in the platform's cache directory (for example
    /// `~/.cache/edgecache/http.sqlite`); without the `sqlite` feature, a
    /// [`MemoryStore`](crate::store::MemoryStore). If the default store
    /// can't be opened, the cache logs one warning saying where and why,
    /// and requests go to the origin.
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// A store shared with other code (for example, to inspect it directly).
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The cache-wide expiry, for responses whose headers don't say how
    /// long they stay fresh. Default: none, and RFC 9111 applies: heuristic
    /// freshness where allowed (see [`heuristic_max`](Self::heuristic_max)),
    /// else the response is stored only with a validator and revalidated
    /// before each use. [`ExpireAfter::Never`] caches everything for good,
    /// as requests-cache does.
    pub fn expire_after(mut self, expire_after: impl Into<ExpireAfter>) -> Self {
        self.expire_after = Some(expire_after.into());
        self
    }

    /// The longest heuristic freshness (RFC 9111 §4.2.2): a response with
    /// `Last-Modified` but no freshness of its own, and no configured
    /// expiry, stays fresh for 10 % of its age, at most this. Default: one day.
    pub fn heuristic_max(mut self, max: Duration) -> Self {
        self.heuristic_max = max;
        self
    }

    /// Follow RFC 9111's rules for a **shared** cache: `s-maxage` and
    /// `proxy-revalidate` count, `private` responses are never stored, and
    /// responses to requests with `Authorization` are stored only when
    /// `public`, `s-maxage` or `must-revalidate` allows it (§3.5).
    ///
    /// Turn it on when one store answers many users: a tower layer in front
    /// of a server, or a Redis store shared by services acting for different
    /// users. Default: `false` (a private cache, for one user's client).
    pub fn shared(mut self, shared: bool) -> Self {
        self.shared = shared;
        self
    }

    /// The targeted cache-control fields (RFC 9213) a **shared** cache
    /// obeys, most specific first. When a response carries one of them with
    /// a valid value, the first such field replaces `Cache-Control` and
    /// `Expires` for this cache: an origin can say `CDN-Cache-Control:
    /// max-age=3600` to the edge and `Cache-Control: no-store` to browsers.
    /// A field that isn't a valid Structured Field Dictionary is ignored.
    /// A private cache ignores these fields, as RFC 9213 says.
    ///
    /// Default: `Edgecache-Cache-Control`, then `CDN-Cache-Control`. An
    /// empty list turns targeted fields off.
    ///
    /// ```
    /// use edgecache::CacheMiddleware;
    /// use http::HeaderName;
    ///
    /// let cache = CacheMiddleware::builder()
    ///     .shared(true)
    ///     .targeted_fields([
    ///         HeaderName::from_static("gateway-cache-control"),
    ///         HeaderName::from_static("cdn-cache-control"),
    ///     ])
    ///     .build()?;
    /// # Ok::<(), edgecache::Error>(())
    /// ```
    pub fn targeted_fields(mut self, names: impl IntoIterator<Item = http::HeaderName>) -> Self {
        self.targeted_fields = names.into_iter().collect();
        self
    }

    /// Expiry per URL pattern: a glob over the URL without its scheme, matched
    /// as a prefix (`site.com/static` covers `https://site.com/static/app.js`).
    /// The first matching pattern wins. Patterns are checked by
    /// [`build`](Self::build). Default: none.
    pub fn urls_expire_after<P, E>(mut self, patterns: impl IntoIterator<Item = (P, E)>) -> Self
    where
        P: Into<String>,
        E: Into<ExpireAfter>,
    {
        self.urls_expire_after = patterns.into_iter().map(|(p, e)| (p.into(), e.into())).collect();
        self
    }

    /// Methods whose responses are cached. Default: `GET`, `HEAD`.
    ///
    /// A successful request with any other unsafe method (`POST`, `PUT`,
    /// `PATCH`, `DELETE`, …) invalidates the entries of its URL.
    pub fn allowed_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.allowed_methods = methods.into_iter().collect();
        self
    }

    /// Status codes whose responses are cached. Default: as RFC 9111
    /// allows: 200, 203, 204, 300, 301, 308, 404, 405, 410, 414 and 501
    /// (heuristically cacheable), plus 302, 307 and other 4xx when the
    /// response gives its own freshness. Never 206: partial content passes
    /// through unstored. Setting a list replaces those rules.
    pub fn allowed_statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.allowed_statuses = Some(statuses.into_iter().collect());
        self
    }

    /// A predicate on the response head; `false` keeps the response out of
    /// the cache. Default: none.
    pub fn filter(mut self, keep: impl Fn(&http::response::Parts) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(keep));
        self
    }

    /// Parameters that carry credentials: query and form/JSON body parameter
    /// names (exact), and header names (case-insensitive). They separate
    /// entries — the key includes a keyed digest of their values, so users
    /// never get each other's responses — and their values are never stored
    /// or logged. The URL's userinfo always counts as one. Replaces the
    /// default list, [`DEFAULT_CREDENTIAL_PARAMETERS`]; include it to extend it.
    pub fn credential_parameters<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.credential_parameters = names.into_iter().map(Into::into).collect();
        self
    }

    /// Parameters left out of cache keys and never stored, so requests that
    /// differ only in them share an entry: cache-busters, tracking
    /// parameters. Same matching as
    /// [`credential_parameters`](Self::credential_parameters); a name given
    /// here is ignored even if it is a credential. Default: none.
    pub fn ignored_parameters<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.ignored_parameters = names.into_iter().map(Into::into).collect();
        self
    }

    /// Request headers that take part in the key. Default:
    /// [`MatchHeaders::None`] (a response's `Vary` applies regardless).
    pub fn match_headers(mut self, match_headers: MatchHeaders) -> Self {
        self.match_headers = match_headers;
        self
    }

    /// Replaces the built-in key computation. `Vary` still applies.
    pub fn key_fn(mut self, key_fn: impl Fn(&RequestHead<'_>) -> String + Send + Sync + 'static) -> Self {
        self.key_fn = Some(Arc::new(key_fn));
        self
    }

    /// Whether a response's own `Cache-Control`/`Expires` freshness decides
    /// its expiry (RFC 9111). With `false`, the configured expiry counts
    /// instead; `no-store` (and `private` in a shared cache) is honoured
    /// either way. Default: `true`.
    pub fn cache_control(mut self, honor: bool) -> Self {
        self.cache_control = honor;
        self
    }

    /// Whether responses carry an `x-cache` header (`HIT`, `MISS`,
    /// `REVALIDATED`, `STALE`). [`CacheInfo`](crate::CacheInfo) is in the
    /// extensions either way. Default: `true`.
    pub fn x_cache_header(mut self, enabled: bool) -> Self {
        self.x_cache_header = enabled;
        self
    }

    /// Whether responses carry a `Cache-Status` header (RFC 9211), e.g.
    /// `edgecache; hit; ttl=42` or `edgecache; fwd=stale; fwd-status=304`.
    /// [`CacheInfo`](crate::CacheInfo) carries the same facts either way.
    /// Default: `true`.
    pub fn cache_status_header(mut self, enabled: bool) -> Self {
        self.cache_status_header = enabled;
        self
    }

    /// Responses with larger bodies stream through to the caller and are not
    /// stored. Default: 16 MiB. (Bodies over 64 KiB stream to the caller in
    /// any case, as they arrive; a copy of those within this size is stored
    /// when the body ends, so the answer's `Cache-Status` cannot say `stored`.)
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// Signs every stored entry with HMAC-SHA256 under this key; the
    /// signature covers the entry's key and method, so an entry copied under
    /// another key is refused too. Entries whose signature fails, or that
    /// carry none, are treated as misses, deleted, and reported once each
    /// with a `tracing` warning. The key also keys the digests of
    /// credentials in cache keys. Default: off.
    ///
    /// Use it when the store can be written by anything but this program (a
    /// shared SQLite file, Redis). The key never appears in `Debug` output.
    pub fn secret_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.secret_key = Some(key.as_ref().to_vec());
        self
    }

    /// Keys that signed entries before the current [`secret_key`](Self::secret_key):
    /// their entries still verify, so keys can be rotated without a cold cache.
    pub fn old_secret_keys<K: AsRef<[u8]>>(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        self.old_secret_keys = keys.into_iter().map(|key| key.as_ref().to_vec()).collect();
        self
    }

    /// Mixed into every signature, so one key can serve several caches that
    /// must not accept each other's entries. Default: empty.
    pub fn salt(mut self, salt: impl AsRef<[u8]>) -> Self {
        self.salt = salt.as_ref().to_vec();
        self
    }

    /// On a transport error or a `5xx`, answer with the stored entry (marked
    /// `STALE`) if it is no staler than this; otherwise the error passes
    /// through unchanged. `true` means however stale. Responses' own
    /// `stale-if-error=N` is honoured either way. Default: off.
    pub fn stale_if_error(mut self, window: impl Into<StaleWindow>) -> Self {
        self.stale_if_error = window.into();
        self
    }

    /// Answer with an expired entry at once (marked `STALE`) if it is no
    /// staler than this, and refresh it in the background, once per key
    /// however many requests arrive. Responses' own
    /// `stale-while-revalidate=N` is honoured either way. Default: off.
    pub fn stale_while_revalidate(mut self, window: impl Into<StaleWindow>) -> Self {
        self.stale_while_revalidate = window.into();
        self
    }

    /// The client that sends background refreshes for reqwest requests (a
    /// tower stack uses its own inner service). Default: a
    /// `reqwest::Client` with default settings, made when first needed.
    pub fn refresh_client(mut self, client: reqwest::Client) -> Self {
        self.refresh_client = Some(client);
        self
    }

    /// The response headers whose values are the entry's cache tags,
    /// split on commas and spaces as each CDN does. Default:
    /// `Edge-Cache-Tag` (Akamai), `Cache-Tag` (Cloudflare) and
    /// `Surrogate-Key` (Fastly). The versioned server records tags from the
    /// same headers, so one `purge tag` reaches both.
    pub fn tag_headers(mut self, names: impl IntoIterator<Item = http::HeaderName>) -> Self {
        self.tag_headers = names.into_iter().collect();
        self
    }

    /// Checks the configuration, opens the default store if none was given,
    /// and builds the cache.
    pub fn build(self) -> Result<CacheMiddleware, Error> {
        let allowed_statuses = self
            .allowed_statuses
            .map(|statuses| {
                statuses
                    .iter()
                    .map(|&code| StatusCode::from_u16(code).map_err(|_| Error::InvalidStatus(code)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let rules = Rules::new(
            self.urls_expire_after,
            RuleOptions {
                default_expire_after: self.expire_after,
                allowed_methods: self.allowed_methods,
                allowed_statuses,
                filter: self.filter,
                honor_cache_control: self.cache_control,
                shared: self.shared,
                heuristic_max: self.heuristic_max,
                targets: self.targeted_fields,
            },
        )?;
        let keys = KeyRules::new(
            self.credential_parameters,
            self.ignored_parameters,
            self.match_headers,
            self.key_fn,
        );
        let store = match self.store {
            Some(store) => store,
            None => default_store(),
        };
        let options = EngineOptions {
            x_cache_header: self.x_cache_header,
            cache_status_header: self.cache_status_header,
            max_body_size: self.max_body_size,
            signer: self
                .secret_key
                .as_ref()
                .map(|key| EntrySigner::new(key, &self.old_secret_keys, &self.salt)),
            stale_if_error: self.stale_if_error,
            stale_while_revalidate: self.stale_while_revalidate,
            tag_headers: self.tag_headers,
        };
        let engine = Engine::new(store, keys, rules, options, self.secret_key.as_deref());
        let refresh_client = Arc::new(std::sync::OnceLock::new());
        if let Some(client) = self.refresh_client {
            let _ = refresh_client.set(client);
        }
        Ok(CacheMiddleware { engine, refresh_client })
    }
}

/// The store at [`Location::from_env`](crate::store::Location::from_env);
/// without the `sqlite` feature, memory unless `EDGECACHE_CACHE` says
/// otherwise.
fn default_store() -> Arc<dyn Store> {
    use crate::store::{CACHE_VARIABLE, Location};
    if cfg!(not(feature = "sqlite")) && std::env::var_os(CACHE_VARIABLE).is_none() {
        return Arc::new(crate::store::MemoryStore::default());
    }
    match Location::from_env() {
        Ok(location) => location.open_or_step_aside(),
        Err(error) => Arc::new(crate::store::Unavailable(format!("{CACHE_VARIABLE}: {error}"))),
    }
}
