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
mod directives;
pub mod policy;
pub(crate) mod targeted;

mod drive;
mod finish;
mod invalidation;
mod plan;
mod respond;
mod store_calls;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body::Body;
use tokio::sync::OnceCell;
use url::Url;

use self::body::{CacheBody, Collected, Recorder, collect_limited};
use self::coalesce::{Inflight, Leader, Turn, follow};
use self::directives::{RequestDirectives, has_directive, has_no_cache, vary_names};
use self::policy::{ExpireAfter, Lifetime, Rules, StaleWindow};
use crate::mode::{CacheInfo, CacheMode, CacheStatus, CacheTags, Forward};
use crate::store::entry::{DecodeError, StoredResponse};
use crate::store::sign::EntrySigner;
use crate::store::{Store, StoreEntry, StoreError, StoredValue};
use edgecache_base::breaker::{Breaker, Transition};
use edgecache_base::key::{CacheKey, KeyRules, KeySecret, RequestHead};
use edgecache_base::tags::tags_in;

pub(crate) use self::drive::Transport;
use self::finish::*;
use self::invalidation::*;
pub(crate) use self::plan::{Answer, Fetch, Pass, Plan};
use self::respond::*;
use self::store_calls::*;

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
        match self.call_store("key_secret", || self.store.key_secret()).await {
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
        self.keys.key(head, self.secret().await)
    }
}
