//! The cache engine: every cache rule, written once, for both adapters.
//!
//! The engine never sees a transport. An adapter asks it for a `Plan`
//! before sending a request, sends the request if the plan says so (with any
//! conditional headers the plan adds), and hands the response back to
//! `Engine::finish` or `Engine::after_pass`. The adapters
//! ([`CacheMiddleware`](crate::CacheMiddleware) for reqwest,
//! [`CacheService`](crate::CacheService) for tower) only convert types.

pub(crate) mod body;
mod coalesce;
pub mod entry;
pub mod key;
pub(crate) mod mode;
pub mod policy;
pub(crate) mod sign;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body::Body;
use url::Url;

use self::body::{CacheBody, Collected, collect_limited};
use self::coalesce::{Inflight, Leader, Turn, follow};
use self::entry::StoredResponse;
use self::key::{CacheKey, KeyRules, RequestHead};
use self::mode::{CacheInfo, CacheMode, CacheStatus, CacheTags};
use self::policy::{ExpireAfter, Lifetime, Rules, StaleWindow, has_directive, has_validator};
use self::sign::EntrySigner;
use crate::store::{Store, StoreEntry, StoreError, StoredValue};

const X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");

/// Headers that describe one connection, not the response: never stored.
const HOP_BY_HOP: &[header::HeaderName] = &[
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Headers a `304 Not Modified` must not overwrite in the stored response.
const KEPT_ON_REVALIDATION: &[header::HeaderName] = &[
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::CONTENT_RANGE,
];

/// Request headers that make a request conditional: the caller validates
/// its own copy, so the cache stays out of the way.
const CONDITIONAL: &[header::HeaderName] = &[
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// The configured cache: rules, store and response options.
pub(crate) struct Engine {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) keys: KeyRules,
    pub(crate) rules: Rules,
    options: EngineOptions,
    inflight: Arc<Inflight>,
    /// Set while the store is failing, so a broken store logs one warning,
    /// not one per request.
    store_failing: AtomicBool,
}

/// How the engine answers, beyond what to store.
pub(crate) struct EngineOptions {
    pub(crate) x_cache_header: bool,
    pub(crate) max_body_size: usize,
    pub(crate) signer: Option<EntrySigner>,
    pub(crate) stale_if_error: StaleWindow,
    pub(crate) stale_while_revalidate: StaleWindow,
    /// The response header that carries cache tags.
    pub(crate) tag_header: header::HeaderName,
}

/// What an adapter does with a request.
pub(crate) enum Plan {
    /// Not the cache's business: send it and report with [`Engine::after_pass`].
    Pass(Pass),
    /// Answer with this response without touching the network.
    Respond(http::Response<Bytes>),
    /// Answer with this (stale) response now, and send the [`Fetch`] in the
    /// background, handing its response to [`Engine::finish`].
    RespondAndRefresh(http::Response<Bytes>, Box<Fetch>),
    /// Send it, with [`Fetch::conditional_headers`] added, and hand the
    /// response to [`Engine::finish`].
    Fetch(Box<Fetch>),
}

/// A request the cache lets through.
pub(crate) struct Pass {
    /// The normalized URL whose entries a successful unsafe request invalidates.
    invalidate: Option<String>,
}

/// A request the cache wants the origin's answer to.
pub(crate) struct Fetch {
    key: CacheKey,
    url: String,
    request: http::request::Parts,
    configured: ExpireAfter,
    stale: Option<Arc<StoredResponse>>,
    conditional: HeaderMap,
    /// Set when this request fetches on behalf of concurrent ones.
    leader: Option<Leader>,
    /// Tags from the request's [`CacheTags`] extension.
    tags: Vec<String>,
}

impl Fetch {
    /// Headers the adapter adds to the request before sending it.
    pub(crate) fn conditional_headers(&self) -> &HeaderMap {
        &self.conditional
    }
}

impl Engine {
    pub(crate) fn new(store: Arc<dyn Store>, keys: KeyRules, rules: Rules, options: EngineOptions) -> Self {
        Self {
            store,
            keys,
            rules,
            options,
            inflight: Arc::default(),
            store_failing: AtomicBool::new(false),
        }
    }

    /// Whether the cache may answer or store this request at all; when it
    /// can't, an adapter need not read a streaming request body.
    pub(crate) fn considers(&self, method: &Method, extensions: &http::Extensions) -> bool {
        self.rules.allows_method(method) && extensions.get::<CacheMode>() != Some(&CacheMode::NoStore)
    }

    /// The plan for a request whose URL cannot be known: let it through.
    pub(crate) fn plan_unaddressable(&self) -> Plan {
        Plan::Pass(Pass { invalidate: None })
    }

    /// Decides what to do with a request. `body` is `None` when the body is a
    /// stream that cannot be read ahead: such requests bypass the cache.
    pub(crate) async fn plan(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        extensions: &http::Extensions,
    ) -> Plan {
        let mut mode = extensions.get::<CacheMode>().copied().unwrap_or_default();
        if mode == CacheMode::NoStore {
            return Plan::Pass(Pass { invalidate: None });
        }
        if !self.rules.allows_method(method) {
            let invalidate = (!method.is_safe()).then(|| self.keys.normalize_url(url));
            return Plan::Pass(Pass { invalidate });
        }
        let Some(body) = body else {
            return Plan::Pass(Pass { invalidate: None });
        };
        if CONDITIONAL.iter().any(|name| headers.contains_key(name)) || has_directive(headers, "no-store") {
            return Plan::Pass(Pass { invalidate: None });
        }
        if mode == CacheMode::Default && has_directive(headers, "no-cache") {
            mode = CacheMode::Refresh;
        }

        let key = self.keys.key(&RequestHead {
            method,
            url,
            headers,
            body,
        });
        let now = SystemTime::now();
        let stored = match mode {
            CacheMode::ForceRefresh => None,
            _ => self.load(&key, headers).await,
        };
        match (stored, mode) {
            (Some(entry), CacheMode::OnlyIfCached) => {
                let status = if entry.is_expired(now) {
                    CacheStatus::Stale
                } else {
                    CacheStatus::Hit
                };
                Plan::Respond(self.response_from(&entry, key, status, now))
            }
            (None, CacheMode::OnlyIfCached) => {
                let mut response = http::Response::new(Bytes::new());
                *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                let (mut parts, body) = response.into_parts();
                self.annotate(&mut parts.headers, &mut parts.extensions, miss(Some(key), None));
                Plan::Respond(http::Response::from_parts(parts, body))
            }
            (Some(entry), CacheMode::Default) if !entry.is_expired(now) => {
                Plan::Respond(self.response_from(&entry, key, CacheStatus::Hit, now))
            }
            (stale, mode) => {
                let fetch = |key, stale, leader| {
                    let conditional = Option::as_deref(&stale).map(conditional_headers).unwrap_or_default();
                    let mut request = http::Request::new(());
                    *request.method_mut() = method.clone();
                    *request.uri_mut() = url.as_str().parse().unwrap_or_default();
                    *request.headers_mut() = headers.clone();
                    let (request, ()) = request.into_parts();
                    let configured = self
                        .rules
                        .configured_expiry(extensions.get::<ExpireAfter>().copied(), url);
                    let url = self.keys.normalize_url(url);
                    let tags = extensions
                        .get::<CacheTags>()
                        .map(|tags| tags.0.clone())
                        .unwrap_or_default();
                    Box::new(Fetch {
                        key,
                        url,
                        request,
                        configured,
                        stale,
                        conditional,
                        leader,
                        tags,
                    })
                };
                // Stale, but allowed to serve while a background refresh runs
                // (one refresh per key, however many callers).
                if mode == CacheMode::Default
                    && let Some(entry) = &stale
                    && self.may_serve_stale(
                        entry,
                        now,
                        self.options.stale_while_revalidate,
                        "stale-while-revalidate",
                    )
                {
                    let response = self.response_from(entry, key.clone(), CacheStatus::Stale, now);
                    return match self.inflight.join(&key) {
                        Turn::Lead(leader) => Plan::RespondAndRefresh(response, fetch(key, stale, Some(leader))),
                        Turn::Follow(_) => Plan::Respond(response),
                    };
                }
                let leader = match mode {
                    CacheMode::ForceRefresh => None,
                    _ => match self.inflight.join(&key) {
                        Turn::Lead(leader) => Some(leader),
                        Turn::Follow(flight) => {
                            if let Some(entry) = follow(flight).await
                                && matches_vary(&entry, headers)
                            {
                                let now = SystemTime::now();
                                return Plan::Respond(self.response_from(&entry, key, CacheStatus::Hit, now));
                            }
                            // The leader had nothing to share: fetch alone.
                            None
                        }
                    },
                };
                Plan::Fetch(fetch(key, stale, leader))
            }
        }
    }

    /// A stale answer when sending a [`Fetch`] failed, if `stale_if_error`
    /// (or the entry's own directive) allows one; `None` lets the error through.
    pub(crate) fn fetch_failed(&self, fetch: &Fetch) -> Option<http::Response<Bytes>> {
        let now = SystemTime::now();
        let stale = fetch.stale.as_ref()?;
        self.may_serve_stale(stale, now, self.options.stale_if_error, "stale-if-error")
            .then(|| self.response_from(stale, fetch.key.clone(), CacheStatus::Stale, now))
    }

    fn may_serve_stale(&self, entry: &StoredResponse, now: SystemTime, window: StaleWindow, directive: &str) -> bool {
        let staleness = entry
            .expires
            .and_then(|expires| now.duration_since(expires).ok())
            .unwrap_or_default();
        window.allows(staleness, &entry.headers, directive)
    }

    /// Invalidates the URL after a successful unsafe request the cache let
    /// through, and returns the report for its response: the adapter puts it
    /// in the extensions and passes it to [`Engine::mark`].
    pub(crate) async fn after_pass(&self, pass: Pass, status: StatusCode) -> CacheInfo {
        if let Some(url) = pass.invalidate
            && (status.is_success() || status.is_redirection())
        {
            let removed = self.store.remove_url(&url).await;
            self.note_store_result(removed, "invalidate");
        }
        miss(None, None)
    }

    /// Takes the origin's response to a [`Fetch`]: stores it when the rules
    /// allow, answers a `304` from the stored entry, and streams responses
    /// too large to keep.
    pub(crate) async fn finish<B>(
        &self,
        mut fetch: Box<Fetch>,
        response: http::Response<B>,
    ) -> Result<http::Response<CacheBody<B>>, B::Error>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        if response.status().is_server_error()
            && let Some(stale) = self.fetch_failed(&fetch)
        {
            return Ok(stale.map(CacheBody::full));
        }
        let now = SystemTime::now();
        if response.status() == StatusCode::NOT_MODIFIED
            && let Some(stale) = fetch.stale.take()
        {
            let response = self.revalidated(*fetch, stale, response.headers(), now).await;
            return Ok(response.map(CacheBody::full));
        }
        let Fetch {
            key,
            url,
            request,
            configured,
            stale,
            leader,
            tags,
            ..
        } = *fetch;
        let (mut parts, body) = response.into_parts();

        let lifetime = self.rules.lifetime(&request, &parts, configured, now);
        let max_body_size = self.options.max_body_size;
        let too_large = content_length(&parts.headers).is_some_and(|length| length > max_body_size as u64);
        let expires = match lifetime {
            Lifetime::Until(expires) if !too_large => expires,
            _ => {
                if stale.is_some() && lifetime == Lifetime::DoNotStore {
                    // The origin no longer lets this be cached: drop our copy.
                    let removed = self.store.remove(key.as_str()).await;
                    self.note_store_result(removed, "remove");
                }
                self.annotate(&mut parts.headers, &mut parts.extensions, miss(Some(key), None));
                return Ok(http::Response::from_parts(
                    parts,
                    CacheBody::streaming(Bytes::new(), body),
                ));
            }
        };

        let body = match collect_limited(body, max_body_size).await? {
            Collected::Complete(body) => body,
            Collected::TooLarge(body) => {
                self.annotate(&mut parts.headers, &mut parts.extensions, miss(Some(key), None));
                return Ok(http::Response::from_parts(parts, body));
            }
        };
        let mut headers = parts.headers.clone();
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
        let (vary_names, vary_digest) = vary(&parts.headers, &request.headers);
        let entry = StoredResponse {
            status: parts.status,
            headers,
            body: body.clone(),
            url,
            method: request.method,
            created_at: now,
            expires,
            vary_names,
            vary_digest,
            tags: self.tags(tags, &parts.headers),
        };
        let info = miss(Some(key.clone()), Some(&entry));
        tracing::debug!(url = %entry.url, key = %key, expires = ?entry.expires, "storing response");
        let entry = Arc::new(entry);
        self.save(&key, Arc::clone(&entry)).await;
        if let Some(leader) = leader {
            leader.share(entry);
        }
        self.annotate(&mut parts.headers, &mut parts.extensions, info);
        Ok(http::Response::from_parts(parts, CacheBody::full(body)))
    }

    /// Answers a `304 Not Modified` with the stored body, the stored headers
    /// updated from the 304, and a refreshed expiry.
    async fn revalidated(
        &self,
        fetch: Fetch,
        stale: Arc<StoredResponse>,
        not_modified: &HeaderMap,
        now: SystemTime,
    ) -> http::Response<Bytes> {
        let Fetch {
            key,
            request,
            configured,
            leader,
            ..
        } = fetch;
        let mut entry = Arc::unwrap_or_clone(stale);
        for (name, value) in not_modified {
            if !KEPT_ON_REVALIDATION.contains(name) && !HOP_BY_HOP.contains(name) {
                entry.headers.insert(name, value.clone());
            }
        }
        let mut merged = http::Response::new(());
        *merged.status_mut() = entry.status;
        *merged.headers_mut() = entry.headers.clone();
        let (merged, ()) = merged.into_parts();
        match self.rules.lifetime(&request, &merged, configured, now) {
            Lifetime::Until(expires) => {
                entry.created_at = now;
                entry.expires = expires;
                let entry = Arc::new(entry);
                self.save(&key, Arc::clone(&entry)).await;
                let response = self.response_from(&entry, key, CacheStatus::Revalidated, now);
                if let Some(leader) = leader {
                    leader.share(entry);
                }
                response
            }
            Lifetime::DoNotStore => {
                let removed = self.store.remove(key.as_str()).await;
                self.note_store_result(removed, "remove");
                self.response_from(&entry, key, CacheStatus::Revalidated, now)
            }
        }
    }

    /// Reads and decodes an entry. Store failures and corrupt entries count
    /// as misses: the cache steps aside rather than failing the request.
    async fn load(&self, key: &CacheKey, request_headers: &HeaderMap) -> Option<Arc<StoredResponse>> {
        let value = self.note_store_result(self.store.get(key.as_str()).await, "read")??;
        let entry = match value.decoded(|bytes| StoredResponse::decode_with(bytes, self.options.signer.as_ref())) {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(key = %key, %error, "dropping undecodable cache entry");
                let removed = self.store.remove(key.as_str()).await;
                self.note_store_result(removed, "remove");
                return None;
            }
        };
        matches_vary(&entry, request_headers).then_some(entry)
    }

    async fn save(&self, key: &CacheKey, entry: Arc<StoredResponse>) {
        let record = StoreEntry {
            key: key.as_str().to_owned(),
            url: entry.url.clone(),
            created_at: entry.created_at,
            expires: entry.expires,
            tags: entry.tags.clone(),
            // Not memoizing `entry`: its body and header values are slices of the
            // transport's read buffer (8 KiB or more), which the store would pin
            // for as long as it keeps the entry. The first hit decodes instead.
            value: StoredValue::new(entry.encode(self.options.signer.as_ref())),
        };
        let saved = self.store.put(record).await;
        self.note_store_result(saved, "write");
    }

    /// Logs the first failure of a streak (and the recovery), never one per
    /// request, and turns failures into `None`.
    fn note_store_result<T>(&self, result: Result<T, StoreError>, operation: &str) -> Option<T> {
        match result {
            Ok(value) => {
                if self.store_failing.load(Ordering::Relaxed) && self.store_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("cache store recovered; caching resumes");
                }
                Some(value)
            }
            Err(error) => {
                if !self.store_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, operation, "cache store failed; requests go to the origin until it recovers");
                }
                None
            }
        }
    }

    fn response_from(
        &self,
        entry: &StoredResponse,
        key: CacheKey,
        status: CacheStatus,
        now: SystemTime,
    ) -> http::Response<Bytes> {
        let info = CacheInfo {
            status,
            from_cache: true,
            created_at: Some(entry.created_at),
            expires: entry.expires,
            is_expired: entry.is_expired(now),
            revalidated: status == CacheStatus::Revalidated,
            cache_key: Some(key),
        };
        let mut response = http::Response::new(entry.body.clone());
        *response.status_mut() = entry.status;
        *response.headers_mut() = entry.headers.clone();
        let (mut parts, body) = response.into_parts();
        self.annotate(&mut parts.headers, &mut parts.extensions, info);
        http::Response::from_parts(parts, body)
    }

    /// Sets the `x-cache` header, unless turned off.
    pub(crate) fn mark(&self, headers: &mut HeaderMap, info: &CacheInfo) {
        if self.options.x_cache_header {
            headers.insert(X_CACHE, HeaderValue::from_static(info.status.as_str()));
        }
    }

    fn annotate(&self, headers: &mut HeaderMap, extensions: &mut http::Extensions, info: CacheInfo) {
        self.mark(headers, &info);
        extensions.insert(info);
    }
}

impl Engine {
    /// The request's tags and those in the response's tag header, each once.
    fn tags(&self, mut tags: Vec<String>, response_headers: &HeaderMap) -> Vec<String> {
        let from_header = response_headers
            .get_all(&self.options.tag_header)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|tag| !tag.is_empty())
            .map(str::to_owned);
        tags.extend(from_header);
        tags.sort();
        tags.dedup();
        tags
    }
}

/// Whether a stored entry answers a request with these headers, given the
/// response's `Vary`.
fn matches_vary(entry: &StoredResponse, request_headers: &HeaderMap) -> bool {
    entry.vary_names.is_empty() || KeyRules::vary_digest(&entry.vary_names, request_headers) == entry.vary_digest
}

fn miss(cache_key: Option<CacheKey>, stored: Option<&StoredResponse>) -> CacheInfo {
    CacheInfo {
        status: CacheStatus::Miss,
        from_cache: false,
        created_at: stored.map(|entry| entry.created_at),
        expires: stored.and_then(|entry| entry.expires),
        is_expired: false,
        revalidated: false,
        cache_key,
    }
}

/// `If-None-Match` / `If-Modified-Since` from a stored entry's validators.
fn conditional_headers(entry: &StoredResponse) -> HeaderMap {
    let mut conditional = HeaderMap::new();
    if let Some(etag) = entry.headers.get(header::ETAG) {
        conditional.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(last_modified) = entry.headers.get(header::LAST_MODIFIED) {
        conditional.insert(header::IF_MODIFIED_SINCE, last_modified.clone());
    }
    debug_assert_eq!(conditional.is_empty(), !has_validator(&entry.headers));
    conditional
}

/// The request headers a response varies on, and a digest of their values.
fn vary(response: &HeaderMap, request: &HeaderMap) -> (Vec<String>, [u8; 16]) {
    let mut names: Vec<String> = response
        .get_all(header::VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    if names.is_empty() {
        return (names, [0; 16]);
    }
    names.sort();
    names.dedup();
    let digest = KeyRules::vary_digest(&names, request);
    (names, digest)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
