//! The cache engine: every cache rule, written once, for both adapters.
//!
//! The engine never sees a transport. An adapter asks it for a `Plan`
//! before sending a request, sends the request if the plan says so (with any
//! conditional headers the plan adds), and hands the response back to
//! `Engine::finish` or `Engine::after_pass`. The adapters
//! ([`CacheMiddleware`](crate::CacheMiddleware) for reqwest,
//! [`CacheService`](crate::CacheService) for tower) only convert types.

pub(crate) mod body;
mod breaker;
mod coalesce;
pub mod key;
pub(crate) mod mode;
pub mod policy;
pub(crate) mod targeted;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body::Body;
use tokio::sync::OnceCell;
use url::Url;

use self::body::{CacheBody, Collected, Recorder, collect_limited};
use self::breaker::{Breaker, Transition};
use self::coalesce::{Inflight, Leader, Turn, follow};
use self::key::{CacheKey, KeyRules, KeySecret, RequestHead};
use self::mode::{CacheInfo, CacheMode, CacheStatus, CacheTags, Forward};
use self::policy::{
    ExpireAfter, Lifetime, RequestDirectives, Rules, StaleWindow, has_directive, has_no_cache, vary_names,
};
use crate::store::entry::{DecodeError, StoredResponse};
use crate::store::sign::EntrySigner;
use crate::store::{Store, StoreEntry, StoreError, StoredValue};

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Headers that describe one connection, not the response: never stored
/// (RFC 9111 §3.1), along with any header the `Connection` header names.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Headers a `304 Not Modified` must not overwrite in the stored response.
const KEPT_ON_REVALIDATION: &[HeaderName] = &[
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::CONTENT_RANGE,
];

/// Request preconditions the cache cannot evaluate for the origin: such
/// requests go through untouched.
const PRECONDITIONS: &[HeaderName] = &[header::IF_MATCH, header::IF_UNMODIFIED_SINCE, header::IF_RANGE];

/// The configured cache: rules, store and response options.
pub(crate) struct Engine {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) keys: KeyRules,
    pub(crate) rules: Rules,
    options: EngineOptions,
    inflight: Arc<Inflight>,
    /// Stops calling a failing store for a while, so a broken store costs
    /// requests nothing and logs one warning, not one per request.
    breaker: Breaker,
    /// The store's [`Store::request_deadline`], read once.
    store_deadline: Option<Duration>,
    /// URLs unsafe requests invalidated while the store failed, deleted
    /// when it answers again.
    missed_invalidations: std::sync::Mutex<MissedInvalidations>,
    /// The secret keying credential and `Vary` digests: the cache's
    /// `secret_key`, else the store's, fetched on first use.
    secret: OnceCell<KeySecret>,
    /// Used while the store can't say its secret, and for stores that keep none.
    process_secret: KeySecret,
    /// Keeps a fetch that was under way when its entry was deleted from
    /// storing it again.
    fences: Arc<Fences>,
    /// This engine, for the task that watches a failed store recover.
    this: std::sync::Weak<Engine>,
}

/// How the engine answers, beyond what to store.
pub(crate) struct EngineOptions {
    pub(crate) x_cache_header: bool,
    pub(crate) cache_status_header: bool,
    pub(crate) max_body_size: usize,
    pub(crate) signer: Option<EntrySigner>,
    pub(crate) stale_if_error: StaleWindow,
    pub(crate) stale_while_revalidate: StaleWindow,
    /// The response header that carries cache tags.
    pub(crate) tag_headers: Vec<HeaderName>,
}

/// Bodies up to this size are read whole before the cache answers; larger
/// ones stream on at once (and are stored when they end, if they fit in
/// `max_body_size`).
const READ_BEFORE_STREAMING: usize = 64 * 1024;

/// What storing a response needs once its body is read.
struct PendingEntry {
    key: CacheKey,
    url: String,
    request: http::request::Parts,
    expires: Option<SystemTime>,
    initial_age: Duration,
    tags: Vec<String>,
    fence: Fence,
    leader: Option<Leader>,
    now: SystemTime,
}

/// How often a failed store that can be pinged is pinged.
const RECOVERY_PING_INTERVAL: Duration = Duration::from_millis(100);

/// Remembers at most this many invalidations the store missed.
const MAX_MISSED_INVALIDATIONS: usize = 1024;

/// Normalized URLs whose invalidation the store missed.
#[derive(Default)]
struct MissedInvalidations {
    urls: Vec<String>,
    /// Some were not remembered.
    overflowed: bool,
}

impl MissedInvalidations {
    fn remember(&mut self, url: &str) {
        if self.urls.iter().any(|known| known == url) {
            return;
        }
        if self.urls.len() < MAX_MISSED_INVALIDATIONS {
            self.urls.push(url.to_owned());
        } else {
            self.overflowed = true;
        }
    }
}

/// What an adapter does with a request.
pub(crate) enum Plan {
    /// Not the cache's business: send it and report with [`Engine::after_pass`].
    Pass(Pass),
    /// Answer with this response without touching the network.
    Respond(Answer),
    /// Answer with this (stale) response now, and send the [`Fetch`] in the
    /// background, handing its response to [`Engine::finish`].
    RespondAndRefresh(Answer, Box<Fetch>),
    /// Send it, with [`Fetch::conditional_headers`] added, and hand the
    /// response to [`Engine::finish`].
    Fetch(Box<Fetch>),
}

/// A response the cache answers with, its headers already marked, and the
/// report that goes in its extensions. Kept apart so an adapter that needs
/// extensions of its own (reqwest's response URL) fills one map, not two.
pub(crate) struct Answer {
    pub(crate) response: http::Response<Bytes>,
    pub(crate) info: CacheInfo,
}

impl Answer {
    /// The response with the report in its extensions.
    pub(crate) fn into_response(self) -> http::Response<Bytes> {
        let mut response = self.response;
        response.extensions_mut().insert(self.info);
        response
    }
}

/// A request the cache lets through.
pub(crate) struct Pass {
    /// The URL whose entries a successful unsafe request invalidates.
    invalidate: Option<Url>,
    forward: Forward,
    cache_key: Option<CacheKey>,
}

impl Pass {
    fn new(forward: Forward) -> Self {
        Self {
            invalidate: None,
            forward,
            cache_key: None,
        }
    }
}

/// A request the cache wants the origin's answer to.
pub(crate) struct Fetch {
    key: CacheKey,
    url: String,
    request: http::request::Parts,
    configured: Option<ExpireAfter>,
    stale: Option<Arc<StoredResponse>>,
    conditional: HeaderMap,
    /// Set when this request fetches on behalf of concurrent ones.
    leader: Option<Leader>,
    /// Tags from the request's [`CacheTags`] extension.
    tags: Vec<String>,
    forward: Forward,
    /// A `HEAD` answered from, and refreshing, the stored `GET`.
    head: bool,
    requested_at: SystemTime,
    fence: Fence,
}

impl Fetch {
    /// Headers the adapter adds to the request before sending it.
    pub(crate) fn conditional_headers(&self) -> &HeaderMap {
        &self.conditional
    }
}

/// What a lookup found.
struct Lookup {
    entry: Option<Arc<StoredResponse>>,
    /// Something is stored for the key, but for other `Vary` values.
    vary_miss: bool,
}

impl Engine {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        keys: KeyRules,
        rules: Rules,
        options: EngineOptions,
        secret_key: Option<&[u8]>,
    ) -> Arc<Self> {
        let secret = match secret_key {
            // Domain-separated from the entry signatures made with the same key.
            Some(key) => OnceCell::new_with(Some(KeySecret::new(&[b"edgecache key digests\0", key].concat()))),
            None => OnceCell::new(),
        };
        Arc::new_cyclic(|this| Self {
            store_deadline: store.request_deadline(),
            store,
            keys,
            rules,
            options,
            inflight: Arc::default(),
            breaker: Breaker::default(),
            missed_invalidations: std::sync::Mutex::default(),
            secret,
            process_secret: KeySecret::random(),
            fences: Arc::default(),
            this: this.clone(),
        })
    }

    /// Whether the cache may answer or store this request at all; when it
    /// can't, an adapter need not read a streaming request body.
    pub(crate) fn considers(&self, method: &Method, extensions: &http::Extensions) -> bool {
        self.rules.allows_method(method) && extensions.get::<CacheMode>() != Some(&CacheMode::NoStore)
    }

    /// The plan for a request whose URL cannot be known: let it through.
    pub(crate) fn plan_unaddressable(&self) -> Plan {
        Plan::Pass(Pass::new(Forward::Bypass))
    }

    /// The secret for key digests, fetching the store's on first use.
    pub(crate) async fn secret(&self) -> &KeySecret {
        if let Some(secret) = self.secret.get() {
            return secret;
        }
        match self.call_store("read the key secret", || self.store.key_secret()).await {
            Some(Some(bytes)) => self.secret.get_or_init(|| async { KeySecret::new(&bytes) }).await,
            Some(None) => self.secret.get_or_init(|| async { self.process_secret.clone() }).await,
            // Entries keyed meanwhile are only misses for other processes.
            None => &self.process_secret,
        }
    }

    /// The secret once known, for work after a request was planned.
    fn known_secret(&self) -> &KeySecret {
        self.secret.get().unwrap_or(&self.process_secret)
    }

    /// The key a request is filed under.
    pub(crate) async fn key(&self, head: &RequestHead<'_>) -> CacheKey {
        self.keys.key_and_url(head, self.secret().await).0
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
            return Plan::Pass(Pass::new(Forward::Bypass));
        }
        if !self.rules.allows_method(method) {
            return Plan::Pass(Pass {
                invalidate: (!method.is_safe()).then(|| url.clone()),
                ..Pass::new(Forward::Method)
            });
        }
        let Some(body) = body else {
            return Plan::Pass(Pass::new(Forward::Bypass));
        };
        if PRECONDITIONS.iter().any(|name| headers.contains_key(name)) || has_directive(headers, "no-store") {
            return Plan::Pass(Pass::new(Forward::Request));
        }
        let directives = if headers.contains_key(header::CACHE_CONTROL) {
            RequestDirectives::parse(headers)
        } else {
            RequestDirectives::default()
        };
        if mode == CacheMode::Default && has_no_cache(headers) {
            mode = CacheMode::Refresh;
        }
        // The client validating its own copy (RFC 9111 §4.3.2).
        let validating = headers.contains_key(header::IF_NONE_MATCH) || headers.contains_key(header::IF_MODIFIED_SINCE);
        // HEAD is answered from, and refreshes, the stored GET (RFC 9111 §4.3.5).
        let head = method == Method::HEAD && self.rules.allows_method(&Method::GET);
        let lookup_method = if head { &Method::GET } else { method };

        let head_of_request = RequestHead {
            method: lookup_method,
            url,
            headers,
            body,
        };
        let (key, normalized) = self.keys.key_and_url(&head_of_request, self.secret().await);
        let now = SystemTime::now();
        let Lookup { entry, vary_miss } = match mode {
            CacheMode::ForceRefresh => Lookup {
                entry: None,
                vary_miss: false,
            },
            _ => self.load(&key, lookup_method, headers).await,
        };
        let only_if_cached = mode == CacheMode::OnlyIfCached || directives.only_if_cached;
        if let Some(entry) = &entry {
            // `OnlyIfCached` takes whatever is stored; otherwise the request's
            // directives decide between fresh, acceptably stale, or the origin.
            let status = match mode {
                CacheMode::OnlyIfCached if entry.is_expired(now) => Some(CacheStatus::Stale),
                CacheMode::OnlyIfCached => Some(CacheStatus::Hit),
                CacheMode::Default if self.is_fresh_enough(entry, &directives, now) => Some(CacheStatus::Hit),
                CacheMode::Default if self.accepts_stale(entry, &directives, now) => Some(CacheStatus::Stale),
                _ => None,
            };
            if let Some(status) = status {
                let info = served(entry, key, status, now);
                return Plan::Respond(self.answer(entry, info, now, head, validating.then_some(headers)));
            }
        }
        if only_if_cached {
            return Plan::Respond(self.gateway_timeout(key));
        }
        if validating {
            // Nothing fresh to validate against here: the origin decides.
            return Plan::Pass(Pass {
                cache_key: Some(key),
                ..Pass::new(Forward::Request)
            });
        }
        let forward = match (mode, &entry) {
            (CacheMode::Refresh | CacheMode::ForceRefresh, _) => Forward::Request,
            (_, Some(_)) => Forward::Stale,
            (_, None) if vary_miss => Forward::VaryMiss,
            (_, None) => Forward::UriMiss,
        };
        let fetch = move |key, stale: Option<Arc<StoredResponse>>, leader| {
            // A HEAD is sent as it came; the stored GET is refreshed from it.
            let conditional = match (&stale, head) {
                (Some(stale), false) => conditional_headers(stale),
                _ => HeaderMap::new(),
            };
            let mut request = http::Request::new(());
            *request.method_mut() = method.clone();
            *request.uri_mut() = url.as_str().parse().unwrap_or_default();
            *request.headers_mut() = headers.clone();
            let (request, ()) = request.into_parts();
            let configured = self
                .rules
                .configured_expiry(extensions.get::<ExpireAfter>().copied(), url);
            let fence = self.fences.enter(&normalized);
            let tags = extensions
                .get::<CacheTags>()
                .map(|tags| tags.0.clone())
                .unwrap_or_default();
            Box::new(Fetch {
                key,
                url: normalized,
                request,
                configured,
                stale,
                conditional,
                leader,
                tags,
                forward,
                head,
                requested_at: SystemTime::now(),
                fence,
            })
        };
        // Stale, but allowed to serve while a background refresh runs
        // (one refresh per key, however many callers).
        if mode == CacheMode::Default
            && !head
            && let Some(stale) = &entry
            && stale.is_expired(now)
            && self.may_serve_stale(
                stale,
                now,
                self.options.stale_while_revalidate,
                "stale-while-revalidate",
            )
        {
            let response = self.answer(
                stale,
                served(stale, key.clone(), CacheStatus::Stale, now),
                now,
                false,
                None,
            );
            return match self.inflight.join(&key) {
                Turn::Lead(leader) => Plan::RespondAndRefresh(response, fetch(key, entry, Some(leader))),
                Turn::Follow(_) => Plan::Respond(response),
            };
        }
        let leader = match mode {
            CacheMode::ForceRefresh => None,
            _ if head => None,
            _ => match self.inflight.join(&key) {
                Turn::Lead(leader) => Some(leader),
                Turn::Follow(flight) => {
                    if let Some(shared) = follow(flight).await
                        && self.matches_vary(&shared, headers)
                    {
                        let now = SystemTime::now();
                        let info = CacheInfo {
                            collapsed: true,
                            forward: Some(forward),
                            forward_status: Some(shared.status),
                            ttl: None,
                            ..served(&shared, key, CacheStatus::Hit, now)
                        };
                        return Plan::Respond(self.answer(&shared, info, now, false, None));
                    }
                    // The leader had nothing to share: fetch alone.
                    None
                }
            },
        };
        Plan::Fetch(fetch(key, entry, leader))
    }

    /// Whether a stored response may answer a request without the origin:
    /// fresh, and within the request's `max-age` and `min-fresh`.
    fn is_fresh_enough(&self, entry: &StoredResponse, directives: &RequestDirectives, now: SystemTime) -> bool {
        if entry.is_expired(now) {
            return false;
        }
        if directives.is_default() {
            return true;
        }
        if directives.max_age.is_some_and(|max_age| entry.age(now) > max_age) {
            return false;
        }
        match (directives.min_fresh, entry.expires) {
            (Some(min_fresh), Some(expires)) => expires.duration_since(now).unwrap_or_default() >= min_fresh,
            _ => true,
        }
    }

    /// Whether the request's `max-stale` accepts this stale response, and
    /// the response allows it (RFC 9111 §4.2.4, §5.2.1.2).
    fn accepts_stale(&self, entry: &StoredResponse, directives: &RequestDirectives, now: SystemTime) -> bool {
        let Some(max_stale) = directives.max_stale else {
            return false;
        };
        if directives.max_age.is_some_and(|max_age| entry.age(now) > max_age)
            || self.rules.forbids_stale(&entry.headers)
        {
            return false;
        }
        max_stale.is_none_or(|max_stale| staleness(entry, now) <= max_stale)
    }

    /// A stale answer when sending a [`Fetch`] failed, if `stale_if_error`
    /// (or the entry's own directive) allows one; `None` lets the error through.
    pub(crate) fn fetch_failed(&self, fetch: &Fetch) -> Option<Answer> {
        let now = SystemTime::now();
        let stale = fetch.stale.as_ref()?;
        self.may_serve_stale(stale, now, self.options.stale_if_error, "stale-if-error")
            .then(|| {
                let info = served(stale, fetch.key.clone(), CacheStatus::Stale, now);
                self.answer(stale, info, now, fetch.head, None)
            })
    }

    fn may_serve_stale(&self, entry: &StoredResponse, now: SystemTime, window: StaleWindow, directive: &str) -> bool {
        !self.rules.forbids_stale(&entry.headers)
            && window.allows(
                staleness(entry, now),
                &self.rules.directives_of(&entry.headers),
                directive,
            )
    }

    /// Invalidates after a successful unsafe request the cache let through
    /// (the request URL, and `Location` and `Content-Location` on the same
    /// origin, RFC 9111 §4.4), and returns the report for its response: the
    /// adapter puts it in the extensions and passes it to [`Engine::mark`].
    pub(crate) async fn after_pass(&self, pass: Pass, status: StatusCode, headers: &HeaderMap) -> CacheInfo {
        if let Some(url) = pass.invalidate
            && (status.is_success() || status.is_redirection())
        {
            let related = [header::LOCATION, header::CONTENT_LOCATION]
                .into_iter()
                .filter_map(|name| headers.get(name)?.to_str().ok().and_then(|value| url.join(value).ok()))
                .filter(|target| target.origin() == url.origin());
            for target in std::iter::once(url.clone()).chain(related) {
                self.invalidate_url(&self.keys.normalize_url(&target)).await;
            }
        }
        CacheInfo {
            forward: Some(pass.forward),
            forward_status: Some(status),
            ..miss(pass.cache_key, None)
        }
    }

    /// Deletes a URL's entries, and keeps fetches under way from storing
    /// them again; how many were deleted.
    async fn invalidate_url(&self, normalized_url: &str) {
        self.fence_url(normalized_url);
        let removed = self.call_store("invalidate", || self.store.remove_url(normalized_url));
        if removed.await.is_none() {
            self.missed_invalidations().remember(normalized_url);
        }
    }

    fn missed_invalidations(&self) -> std::sync::MutexGuard<'_, MissedInvalidations> {
        // A list of URLs and a flag: a panic elsewhere can't leave them torn.
        self.missed_invalidations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Deletes what unsafe requests invalidated while the store failed;
    /// whether there was anything to delete (or that could not be).
    async fn replay_missed_invalidations(&self) -> bool {
        let MissedInvalidations { urls, overflowed } = std::mem::take(&mut *self.missed_invalidations());
        if overflowed {
            tracing::warn!(
                "more than {MAX_MISSED_INVALIDATIONS} URLs were invalidated while the cache store failed; \
                 entries stored for the others may be served until they expire"
            );
        }
        for (done, url) in urls.iter().enumerate() {
            if let Err(error) = self.within_deadline("invalidate", self.store.remove_url(url)).await {
                tracing::debug!(%error, "cache store failed again while deleting missed invalidations");
                let mut missed = self.missed_invalidations();
                for url in &urls[done..] {
                    missed.remember(url);
                }
                break;
            }
        }
        overflowed || !urls.is_empty()
    }

    /// Keeps fetches under way for this URL from storing what they get:
    /// call it before deleting the URL's entries.
    pub(crate) fn fence_url(&self, normalized_url: &str) {
        self.fences.bump(normalized_url);
    }

    /// Keeps every fetch under way from storing what it gets: for deletions
    /// that are not by URL (tag, age, clear).
    pub(crate) fn fence_all(&self) {
        self.fences.bump_all();
    }

    /// Takes the origin's response to a [`Fetch`]: stores it when the rules
    /// allow, answers a `304` from the stored entry, and streams responses
    /// too large to keep.
    pub(crate) async fn finish<B>(
        self: &Arc<Self>,
        mut fetch: Box<Fetch>,
        response: http::Response<B>,
    ) -> Result<http::Response<CacheBody<B>>, B::Error>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        if response.status().is_server_error()
            && let Some(stale) = self.fetch_failed(&fetch)
        {
            return Ok(stale.into_response().map(CacheBody::full));
        }
        let now = SystemTime::now();
        if fetch.head {
            return Ok(self.finish_head(*fetch, response, now).await);
        }
        if response.status() == StatusCode::NOT_MODIFIED
            && let Some(stale) = fetch.stale.take()
        {
            let response = self.revalidated(*fetch, stale, response.headers(), now).await;
            return Ok(response.into_response().map(CacheBody::full));
        }
        let Fetch {
            key,
            url,
            request,
            configured,
            stale,
            leader,
            tags,
            forward,
            requested_at,
            fence,
            ..
        } = *fetch;
        let (mut parts, body) = response.into_parts();
        let not_stored = |engine: &Self, parts: &mut http::response::Parts, key| {
            let info = CacheInfo {
                forward: Some(forward),
                forward_status: Some(parts.status),
                ..miss(Some(key), None)
            };
            engine.annotate(&mut parts.headers, &mut parts.extensions, info);
        };

        let lifetime = self.rules.lifetime(&request, &parts, configured, requested_at, now);
        let max_body_size = self.options.max_body_size;
        let too_large = content_length(&parts.headers).is_some_and(|length| length > max_body_size as u64);
        let (expires, initial_age) = match lifetime {
            Lifetime::Until { expires, initial_age } if !too_large => (expires, initial_age),
            _ => {
                if too_large && matches!(lifetime, Lifetime::Until { .. }) {
                    too_large_to_cache(&url, max_body_size);
                }
                if let Some(stale) = &stale
                    && lifetime == Lifetime::DoNotStore
                {
                    // The origin no longer lets this be cached: drop our copy.
                    self.call_store("remove", || self.store.remove(&stale.key)).await;
                }
                not_stored(self, &mut parts, key);
                return Ok(http::Response::from_parts(
                    parts,
                    CacheBody::streaming(Bytes::new(), body),
                ));
            }
        };

        let pending = PendingEntry {
            key,
            url,
            request,
            expires,
            initial_age,
            tags,
            fence,
            leader,
            now,
        };
        // Small bodies are read whole before answering, so the answer can say
        // whether it was stored. Larger ones stream on at once, a copy is kept
        // up to `max_body_size`, and it is stored when the body ends.
        let info_key = pending.key.clone();
        // Bound first: a temporary in the `match` would live across its awaits.
        let collected = collect_limited(body, max_body_size.min(READ_BEFORE_STREAMING)).await?;
        let (read, rest) = match collected {
            Collected::Complete(body) => {
                let (stored, entry) = self
                    .store_entry(pending, parts.status, &parts.headers, body.clone())
                    .await;
                let info = CacheInfo {
                    forward: Some(forward),
                    forward_status: Some(parts.status),
                    stored,
                    ..miss(Some(info_key), Some(&entry))
                };
                self.annotate(&mut parts.headers, &mut parts.extensions, info);
                return Ok(http::Response::from_parts(parts, CacheBody::full(body)));
            }
            Collected::TooLarge(read, rest) => (read, rest),
        };
        if max_body_size <= READ_BEFORE_STREAMING {
            too_large_to_cache(&pending.url, max_body_size);
            not_stored(self, &mut parts, info_key);
            return Ok(http::Response::from_parts(parts, CacheBody::streaming(read, rest)));
        }
        // Kept as the origin sent them, before the answer is marked.
        let (status, headers) = (parts.status, parts.headers.clone());
        not_stored(self, &mut parts, info_key);
        let engine = Arc::clone(self);
        let recorder = Recorder::new(&read, max_body_size, move |copy| match copy {
            // The body ends inside someone's poll: store from a task, if
            // there is a runtime to run one (never a panic without).
            Some(body) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        engine.store_entry(pending, status, &headers, body).await;
                    });
                }
                Err(_) => tracing::debug!(url = %pending.url, "not cached: the body ended outside a Tokio runtime"),
            },
            None => too_large_to_cache(&pending.url, max_body_size),
        });
        Ok(http::Response::from_parts(
            parts,
            CacheBody::recording(read, rest, recorder),
        ))
    }

    /// Stores a response read whole, and shares it with the requests that
    /// waited for it; whether it was stored, and the entry.
    async fn store_entry(
        &self,
        pending: PendingEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
    ) -> (bool, Arc<StoredResponse>) {
        let PendingEntry {
            key,
            url,
            request,
            expires,
            initial_age,
            tags,
            fence,
            leader,
            now,
        } = pending;
        let vary_names: Vec<String> = {
            let mut names: Vec<String> = vary_names(headers).collect();
            names.sort();
            names.dedup();
            names
        };
        let vary_digest = if vary_names.is_empty() {
            [0; 16]
        } else {
            KeyRules::vary_digest(&vary_names, &request.headers, self.known_secret())
        };
        let mut entry = StoredResponse {
            status,
            headers: storable_headers(headers),
            body,
            key: key.as_str().to_owned(),
            url,
            method: request.method,
            created_at: now,
            expires,
            initial_age,
            vary_names,
            vary_digest,
            tags: self.tags(tags, headers),
        };
        tracing::debug!(url = %entry.url, key = %key, expires = ?entry.expires, "storing response");
        let stored = self.save(&key, &mut entry, &fence).await;
        let entry = Arc::new(entry);
        if let Some(leader) = leader {
            leader.share(Arc::clone(&entry));
        }
        (stored, entry)
    }

    /// A `HEAD` the origin answered: passes it on, and updates the stored
    /// `GET` from it, or marks that stale when they disagree (RFC 9111 §4.3.5).
    async fn finish_head<B>(
        &self,
        fetch: Fetch,
        response: http::Response<B>,
        now: SystemTime,
    ) -> http::Response<CacheBody<B>>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let (mut parts, body) = response.into_parts();
        let mut stored = false;
        if parts.status == StatusCode::OK
            && let Some(entry) = fetch.stale
        {
            let mut entry = Arc::unwrap_or_clone(entry);
            let same = |name: HeaderName| match (parts.headers.get(&name), entry.headers.get(&name)) {
                (None, _) => true,
                (Some(new), Some(old)) => new == old,
                (Some(new), None) => {
                    name == header::CONTENT_LENGTH && new.as_bytes() == entry.body.len().to_string().as_bytes()
                }
            };
            if same(header::ETAG) && same(header::LAST_MODIFIED) && same(header::CONTENT_LENGTH) {
                merge_headers(&mut entry.headers, &parts.headers);
                let (merged, ()) = response_parts(&entry);
                match self
                    .rules
                    .lifetime(&fetch.request, &merged, fetch.configured, fetch.requested_at, now)
                {
                    Lifetime::Until { expires, initial_age } => {
                        entry.created_at = now;
                        entry.expires = expires;
                        entry.initial_age = initial_age;
                    }
                    Lifetime::DoNotStore => entry.expires = Some(now),
                }
            } else {
                entry.expires = Some(now);
            }
            stored = self.save(&fetch.key, &mut entry, &fetch.fence).await;
        }
        let info = CacheInfo {
            forward: Some(fetch.forward),
            forward_status: Some(parts.status),
            stored,
            ..miss(Some(fetch.key), None)
        };
        self.annotate(&mut parts.headers, &mut parts.extensions, info);
        http::Response::from_parts(parts, CacheBody::streaming(Bytes::new(), body))
    }

    /// Answers a `304 Not Modified` with the stored body, the stored headers
    /// updated from the 304, and a refreshed expiry.
    async fn revalidated(
        &self,
        fetch: Fetch,
        stale: Arc<StoredResponse>,
        not_modified: &HeaderMap,
        now: SystemTime,
    ) -> Answer {
        let Fetch {
            key,
            request,
            configured,
            leader,
            requested_at,
            fence,
            ..
        } = fetch;
        let mut entry = Arc::unwrap_or_clone(stale);
        merge_headers(&mut entry.headers, not_modified);
        let (merged, ()) = response_parts(&entry);
        let mut stored = false;
        match self.rules.lifetime(&request, &merged, configured, requested_at, now) {
            Lifetime::Until { expires, initial_age } => {
                entry.created_at = now;
                entry.expires = expires;
                entry.initial_age = initial_age;
                stored = self.save(&key, &mut entry, &fence).await;
                let entry = Arc::new(entry);
                let response = self.revalidated_answer(&entry, key, stored, now);
                if let Some(leader) = leader {
                    leader.share(entry);
                }
                response
            }
            Lifetime::DoNotStore => {
                self.call_store("remove", || self.store.remove(&entry.key)).await;
                self.revalidated_answer(&entry, key, stored, now)
            }
        }
    }

    fn revalidated_answer(&self, entry: &StoredResponse, key: CacheKey, stored: bool, now: SystemTime) -> Answer {
        let info = CacheInfo {
            forward: Some(Forward::Stale),
            forward_status: Some(StatusCode::NOT_MODIFIED),
            stored,
            ..served(entry, key, CacheStatus::Revalidated, now)
        };
        self.answer(entry, info, now, false, None)
    }

    /// Reads and decodes an entry, and its `Vary` variant when the latest
    /// response stored for the key was for other header values. Store
    /// failures, corrupt entries and entries stored for another request
    /// count as misses: the cache steps aside rather than failing the request.
    async fn load(&self, key: &CacheKey, method: &Method, request_headers: &HeaderMap) -> Lookup {
        let Some(entry) = self.load_one(key, method).await else {
            return Lookup {
                entry: None,
                vary_miss: false,
            };
        };
        if entry.vary_names.is_empty() {
            return Lookup {
                entry: Some(entry),
                vary_miss: false,
            };
        }
        let digest = KeyRules::vary_digest(&entry.vary_names, request_headers, self.known_secret());
        if digest == entry.vary_digest {
            return Lookup {
                entry: Some(entry),
                vary_miss: false,
            };
        }
        let variant = self
            .load_one(&key.variant(&digest), method)
            .await
            .filter(|variant| self.matches_vary(variant, request_headers));
        Lookup {
            vary_miss: variant.is_none(),
            entry: variant,
        }
    }

    async fn load_one(&self, key: &CacheKey, method: &Method) -> Option<Arc<StoredResponse>> {
        let key_text = key.as_str();
        let value = self.call_store("read", || self.store.get(key_text)).await??;
        let entry = match value.decoded(|bytes| StoredResponse::decode_with(bytes, self.options.signer.as_ref())) {
            Ok(entry) if entry.key == key_text && entry.method == method => entry,
            Ok(_) => {
                tracing::warn!(key = %key, "dropping a cache entry stored for another request");
                self.remove_quietly(key).await;
                return None;
            }
            Err(DecodeError::UnsupportedVersion(version)) => {
                tracing::debug!(key = %key, version, "dropping a cache entry of another format version");
                self.remove_quietly(key).await;
                return None;
            }
            Err(error) => {
                tracing::warn!(key = %key, %error, "dropping undecodable cache entry");
                self.remove_quietly(key).await;
                return None;
            }
        };
        Some(entry)
    }

    async fn remove_quietly(&self, key: &CacheKey) {
        self.call_store("remove", || self.store.remove(key.as_str())).await;
    }

    /// Whether a stored entry answers a request with these headers, given
    /// the response's `Vary`.
    fn matches_vary(&self, entry: &StoredResponse, request_headers: &HeaderMap) -> bool {
        entry.vary_names.is_empty()
            || KeyRules::vary_digest(&entry.vary_names, request_headers, self.known_secret()) == entry.vary_digest
    }

    /// Stores an entry under its request's key, and under its `Vary`
    /// variant's key so other variants don't replace it, unless its URL was
    /// invalidated since the request was planned; whether it was stored.
    async fn save(&self, key: &CacheKey, entry: &mut StoredResponse, fence: &Fence) -> bool {
        entry.key = key.as_str().to_owned();
        if fence.breached() {
            tracing::debug!(url = %entry.url, "not storing: the entry was invalidated while it was fetched");
            return false;
        }
        let variant_key = (!entry.vary_names.is_empty()).then(|| key.variant(&entry.vary_digest));
        if let Some(variant_key) = &variant_key {
            let mut variant = entry.clone();
            variant.key = variant_key.as_str().to_owned();
            if !self.put(&variant).await {
                return false;
            }
        }
        let stored = self.put(entry).await;
        // A deletion that ran between the check above and the writes must
        // win: it fenced before it deleted, so this sees it.
        if fence.breached() {
            for key in std::iter::once(key).chain(&variant_key) {
                self.remove_quietly(key).await;
            }
            return false;
        }
        stored
    }

    async fn put(&self, entry: &StoredResponse) -> bool {
        let record = StoreEntry {
            key: entry.key.clone(),
            url: entry.url.clone(),
            created_at: entry.created_at,
            expires: entry.expires,
            tags: entry.tags.clone(),
            // Not memoizing `entry`: its body and header values are slices of the
            // transport's read buffer (8 KiB or more), which the store would pin
            // for as long as it keeps the entry. The first hit decodes instead.
            value: StoredValue::new(entry.encode(self.options.signer.as_ref())),
        };
        self.call_store("write", || self.store.put(record)).await.is_some()
    }

    /// A store call, given up (as a failure) past the store's deadline.
    async fn within_deadline<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.store_deadline {
            Some(after) => tokio::time::timeout(after, call)
                .await
                .unwrap_or(Err(StoreError::TimedOut { operation, after })),
            None => call.await,
        }
    }

    /// Calls the store on a request's behalf: not at all while the breaker
    /// is open, and never past the store's deadline. Failures become `None`
    /// (the request goes on as a miss); only the first of a streak, and the
    /// recovery, are logged.
    async fn call_store<'a, T, F>(&'a self, operation: &'static str, call: impl FnOnce() -> F) -> Option<T>
    where
        F: Future<Output = Result<T, StoreError>> + 'a,
    {
        let permit = self.breaker.permit()?;
        let result = self.within_deadline(operation, call()).await;
        match result {
            Ok(value) => {
                if permit.succeeded() == Transition::Closed {
                    tracing::info!("cache store answers again; caching resumes");
                    // What this probe read may be what an unsafe request
                    // invalidated meanwhile: delete those, and don't use it.
                    if self.replay_missed_invalidations().await {
                        return None;
                    }
                }
                Some(value)
            }
            Err(error) => {
                if permit.failed() == Transition::Opened {
                    tracing::warn!(%error, operation, "cache store failed; requests go to the origin, and the store is retried with backoff until it answers");
                    self.watch_for_recovery();
                }
                None
            }
        }
    }

    /// Pings a failed store in the background, if it can be pinged, and
    /// closes the breaker as soon as it answers (once the invalidations it
    /// missed are applied), rather than when the backoff runs out.
    fn watch_for_recovery(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.breaker.start_watching() {
            return;
        }
        let this = self.this.clone();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(RECOVERY_PING_INTERVAL).await;
                let Some(engine) = this.upgrade() else {
                    return;
                };
                if !engine.breaker.is_open() {
                    engine.breaker.stop_watching();
                    return;
                }
                match engine
                    .within_deadline("ping", async { engine.store.ping().await.transpose() })
                    .await
                {
                    // The store can't be pinged: the backoff decides.
                    Ok(None) => {
                        engine.breaker.stop_watching();
                        return;
                    }
                    Ok(Some(())) => {
                        engine.replay_missed_invalidations().await;
                        if engine.missed_invalidations().urls.is_empty() && engine.breaker.is_open() {
                            engine.breaker.close();
                            engine.breaker.stop_watching();
                            tracing::info!("cache store answers again; caching resumes");
                            return;
                        }
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// A response from a stored entry: the whole response, its head alone
    /// for `HEAD`, or a `304` when the request's own validators match
    /// (RFC 9110 §13.1.1, §13.1.3).
    fn answer(
        &self,
        entry: &StoredResponse,
        info: CacheInfo,
        now: SystemTime,
        head: bool,
        validating: Option<&HeaderMap>,
    ) -> Answer {
        let not_modified = validating.is_some_and(|request| not_modified(request, entry));
        let body = if head || not_modified {
            Bytes::new()
        } else {
            entry.body.clone()
        };
        let mut response = http::Response::new(body);
        // Sized for `Age`, `x-cache` and `Cache-Status` too: a clone would be
        // exactly full, and growing it costs more than filling a new map.
        let mut headers = HeaderMap::with_capacity(entry.headers.len() + 3);
        for (name, value) in &entry.headers {
            headers.append(name, value.clone());
        }
        headers.insert(header::AGE, HeaderValue::from(entry.age(now).as_secs()));
        if not_modified {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            for name in [
                header::CONTENT_LENGTH,
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                header::CONTENT_RANGE,
            ] {
                headers.remove(name);
            }
        } else {
            *response.status_mut() = entry.status;
        }
        self.mark(&mut headers, &info);
        *response.headers_mut() = headers;
        Answer { response, info }
    }

    /// `504 Gateway Timeout`: what `only-if-cached` gets when nothing stored
    /// may answer (RFC 9111 §5.2.1.7).
    fn gateway_timeout(&self, key: CacheKey) -> Answer {
        let mut response = http::Response::new(Bytes::new());
        *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        let info = CacheInfo {
            detail: Some("only-if-cached"),
            ..miss(Some(key), None)
        };
        self.mark(response.headers_mut(), &info);
        Answer { response, info }
    }

    /// Sets the `x-cache` and `Cache-Status` headers, unless turned off.
    pub(crate) fn mark(&self, headers: &mut HeaderMap, info: &CacheInfo) {
        if self.options.x_cache_header {
            headers.insert(X_CACHE, HeaderValue::from_static(info.status.as_str()));
        }
        if self.options.cache_status_header {
            // On the stack, then one copy into the header: this runs on every hit.
            let mut buffer = [0u8; 160];
            let mut len = 0;
            info.write_cache_status(|part| {
                let end = len + part.len();
                if let Some(slot) = buffer.get_mut(len..end) {
                    slot.copy_from_slice(part.as_bytes());
                    len = end;
                }
            });
            if let Ok(value) = HeaderValue::from_bytes(&buffer[..len]) {
                headers.insert(CACHE_STATUS, value);
            }
        }
    }

    fn annotate(&self, headers: &mut HeaderMap, extensions: &mut http::Extensions, info: CacheInfo) {
        self.mark(headers, &info);
        extensions.insert(info);
    }

    /// The request's tags and those in the response's tag headers, each once.
    fn tags(&self, mut tags: Vec<String>, response_headers: &HeaderMap) -> Vec<String> {
        tags.extend(tags_in(response_headers, &self.options.tag_headers));
        tags.sort();
        tags.dedup();
        tags
    }
}

/// The response headers cache tags are read from by default, by the cache
/// and the versioned server alike: Akamai's, Cloudflare's and Fastly's.
pub(crate) fn default_tag_headers() -> Vec<HeaderName> {
    ["edge-cache-tag", "cache-tag", "surrogate-key"]
        .into_iter()
        .map(HeaderName::from_static)
        .collect()
}

/// The cache tags in `headers`' values of `names`, split on commas and
/// spaces (Akamai and Cloudflare separate them with commas, Fastly with
/// spaces); tags that are not visible ASCII are dropped.
pub(crate) fn tags_in<'a>(headers: &'a HeaderMap, names: &'a [HeaderName]) -> impl Iterator<Item = String> + 'a {
    names
        .iter()
        .flat_map(|name| headers.get_all(name))
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split([',', ' ', '\t']))
        .filter(|tag| !tag.is_empty())
        .map(str::to_owned)
}

/// Invalidation fences for fetches under way: a fetch takes a [`Fence`] on
/// its URL when planned, and stores what it got only if no deletion of that
/// URL (or of everything) ran since. Exact per URL: unrelated URLs never
/// keep each other's responses out of the cache, however many unsafe
/// requests run meanwhile.
#[derive(Default)]
struct Fences {
    /// Bumped by deletions that are not by URL (tag, age, clear).
    all: AtomicU64,
    /// URLs with a fetch under way: how many, and how often each was
    /// invalidated meanwhile. A URL nobody fetches has no slot.
    urls: std::sync::Mutex<std::collections::HashMap<String, UrlFence>>,
}

#[derive(Default)]
struct UrlFence {
    fetches: usize,
    invalidations: u64,
}

impl Fences {
    fn urls(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, UrlFence>> {
        // Counters only: a panic elsewhere can't leave them torn.
        self.urls.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fence for a fetch of `url` about to start.
    fn enter(self: &Arc<Self>, url: &str) -> Fence {
        let all = self.all.load(Ordering::Acquire);
        let mut urls = self.urls();
        let slot = match urls.get_mut(url) {
            Some(slot) => slot,
            None => urls.entry(url.to_owned()).or_default(),
        };
        slot.fetches += 1;
        Fence {
            fences: Arc::clone(self),
            url: url.to_owned(),
            all,
            invalidations: slot.invalidations,
        }
    }

    fn bump(&self, url: &str) {
        if let Some(slot) = self.urls().get_mut(url) {
            slot.invalidations = slot.invalidations.wrapping_add(1);
        }
    }

    fn bump_all(&self) {
        self.all.fetch_add(1, Ordering::AcqRel);
    }
}

/// A fetch's hold on its URL's invalidations; released when dropped.
pub(crate) struct Fence {
    fences: Arc<Fences>,
    url: String,
    all: u64,
    invalidations: u64,
}

impl Fence {
    /// Whether the URL (or everything) was invalidated since the fetch began.
    fn breached(&self) -> bool {
        self.fences.all.load(Ordering::Acquire) != self.all
            || self
                .fences
                .urls()
                .get(&self.url)
                .is_none_or(|slot| slot.invalidations != self.invalidations)
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        let mut urls = self.fences.urls();
        if let Some(slot) = urls.get_mut(&self.url) {
            slot.fetches = slot.fetches.saturating_sub(1);
            if slot.fetches == 0 {
                urls.remove(&self.url);
            }
        }
    }
}

/// Whether a stored response satisfies the request's `If-None-Match` (weak
/// comparison), or, without one, its `If-Modified-Since`.
fn not_modified(request: &HeaderMap, stored: &StoredResponse) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = stored.headers.get(header::ETAG).and_then(|etag| etag.to_str().ok()) else {
            return false;
        };
        let weak = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|tag| tag.trim() == "*" || weak(tag) == weak(etag));
    }
    let date = |headers: &HeaderMap, name| {
        headers
            .get(name)
            .and_then(|value: &HeaderValue| httpdate::parse_http_date(value.to_str().ok()?).ok())
    };
    let Some(since) = date(request, header::IF_MODIFIED_SINCE) else {
        return false;
    };
    // Without `Last-Modified`, the stored `Date`, else when it was received
    // (RFC 9111 §4.3.2).
    let modified = date(&stored.headers, header::LAST_MODIFIED)
        .or_else(|| date(&stored.headers, header::DATE))
        .unwrap_or(stored.created_at);
    modified <= since
}

/// How long past its expiry an entry is (zero while fresh).
fn staleness(entry: &StoredResponse, now: SystemTime) -> Duration {
    entry
        .expires
        .and_then(|expires| now.duration_since(expires).ok())
        .unwrap_or_default()
}

/// `later - now` in whole seconds, negative when `later` has passed.
fn signed_seconds(later: SystemTime, now: SystemTime) -> i64 {
    match later.duration_since(now) {
        Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
        Err(behind) => i64::try_from(behind.duration().as_secs()).map_or(i64::MIN, |seconds| -seconds),
    }
}

/// The response headers worth storing: without hop-by-hop headers, those
/// the `Connection` header names (RFC 9111 §3.1), or `Age`, which is
/// computed afresh on every answer.
fn storable_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = headers.clone();
    for named in connection_named(headers) {
        kept.remove(named);
    }
    for name in HOP_BY_HOP {
        kept.remove(*name);
    }
    kept.remove(header::AGE);
    kept
}

/// The header names listed in `Connection`.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect()
}

/// Updates stored headers from a `304` or a `HEAD` (RFC 9111 §3.2), leaving
/// alone those that describe the stored body.
fn merge_headers(stored: &mut HeaderMap, update: &HeaderMap) {
    let update = storable_headers(update);
    for name in update.keys() {
        if !KEPT_ON_REVALIDATION.contains(name) {
            stored.remove(name);
        }
    }
    for (name, value) in &update {
        if !KEPT_ON_REVALIDATION.contains(name) {
            stored.append(name, value.clone());
        }
    }
}

/// A stored entry's status and headers, as the expiry rules take them.
fn response_parts(entry: &StoredResponse) -> (http::response::Parts, ()) {
    let mut response = http::Response::new(());
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    response.into_parts()
}

/// The report on an answer from a stored entry.
fn served(entry: &StoredResponse, key: CacheKey, status: CacheStatus, now: SystemTime) -> CacheInfo {
    CacheInfo {
        status,
        from_cache: true,
        created_at: Some(entry.created_at),
        expires: entry.expires,
        is_expired: entry.is_expired(now),
        revalidated: status == CacheStatus::Revalidated,
        cache_key: Some(key),
        ttl: entry.expires.map(|expires| signed_seconds(expires, now)),
        ..miss(None, None)
    }
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
        forward: None,
        forward_status: None,
        stored: false,
        collapsed: false,
        ttl: None,
        detail: None,
    }
}

/// Says once per response, at `info`, why a cacheable response was not kept.
fn too_large_to_cache(url: &str, max_body_size: usize) {
    tracing::info!(%url, max_body_size, "not cached: the body is larger than max_body_size");
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
    conditional
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_read_from_every_vendors_header_split_as_each_splits_them() {
        let mut headers = HeaderMap::new();
        headers.insert("edge-cache-tag", HeaderValue::from_static("product-42, sale"));
        headers.insert("cache-tag", HeaderValue::from_static("cf-a,cf-b"));
        headers.insert("surrogate-key", HeaderValue::from_static("fastly-a  fastly-b"));
        headers.insert("x-other", HeaderValue::from_static("not-a-tag"));
        let tags: Vec<String> = tags_in(&headers, &default_tag_headers()).collect();
        assert_eq!(tags, ["product-42", "sale", "cf-a", "cf-b", "fastly-a", "fastly-b"]);
    }

    proptest::proptest! {
        #[test]
        fn any_header_value_gives_tags_without_separators_or_empties(value in proptest::collection::vec(0u8..=255, 0..200)) {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.insert("surrogate-key", value);
            }
            for tag in tags_in(&headers, &default_tag_headers()) {
                proptest::prop_assert!(!tag.is_empty());
                proptest::prop_assert!(!tag.contains([',', ' ', '\t']));
            }
        }
    }
}
