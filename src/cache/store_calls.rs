//! Calls to the store: each under the store's deadline and the breaker, so a
//! failing store costs requests nothing.

use super::*;

/// What a lookup found.
pub(super) struct Lookup {
    pub(super) entry: Option<Arc<StoredResponse>>,
    /// Something is stored for the key, but for other `Vary` values.
    pub(super) vary_miss: bool,
}

/// Why a stored value is not used, and is dropped.
pub(super) enum Rejected {
    OtherRequest,
    OtherVersion(u8),
    Undecodable(DecodeError),
}

impl Rejected {
    fn log(&self, key: &CacheKey) {
        match self {
            Rejected::OtherRequest => tracing::warn!(key = %key, "dropping a cache entry stored for another request"),
            Rejected::OtherVersion(version) => {
                tracing::debug!(key = %key, version, "dropping a cache entry of another format version");
            }
            Rejected::Undecodable(error) => tracing::warn!(key = %key, %error, "dropping undecodable cache entry"),
        }
    }
}

/// How often a failed store that can be pinged is pinged.
pub(super) const RECOVERY_PING_INTERVAL: Duration = Duration::from_millis(100);

impl Engine {
    /// Reads and decodes an entry, and its `Vary` variant when the latest
    /// response stored for the key was for other header values. Store
    /// failures, corrupt entries and entries stored for another request
    /// count as misses: the cache steps aside rather than failing the request.
    pub(super) async fn load(&self, key: &CacheKey, method: &Method, request_headers: &HeaderMap) -> Lookup {
        let entry = self.load_one(key, method).await;
        match self.first_read(entry, key, request_headers) {
            Ok(lookup) => lookup,
            Err(variant_key) => self.variant_read(self.load_one(&variant_key, method).await, request_headers),
        }
    }

    /// What the entry read for a key says: the lookup, or (`Err`) the key
    /// of the `Vary` variant to read for these request headers.
    fn first_read(
        &self,
        entry: Option<Arc<StoredResponse>>,
        key: &CacheKey,
        request_headers: &HeaderMap,
    ) -> Result<Lookup, CacheKey> {
        let Some(entry) = entry else {
            return Ok(Lookup {
                entry: None,
                vary_miss: false,
            });
        };
        if entry.vary_names.is_empty() {
            return Ok(Lookup {
                entry: Some(entry),
                vary_miss: false,
            });
        }
        let digest = KeyRules::vary_digest(&entry.vary_names, request_headers, self.known_secret());
        if digest == entry.vary_digest {
            return Ok(Lookup {
                entry: Some(entry),
                vary_miss: false,
            });
        }
        Err(key.variant(&digest))
    }

    /// The lookup, once the `Vary` variant was read.
    fn variant_read(&self, variant: Option<Arc<StoredResponse>>, request_headers: &HeaderMap) -> Lookup {
        let variant = variant.filter(|variant| self.matches_vary(variant, request_headers));
        Lookup {
            vary_miss: variant.is_none(),
            entry: variant,
        }
    }

    pub(super) async fn load_one(&self, key: &CacheKey, method: &Method) -> Option<Arc<StoredResponse>> {
        let value = self.call_store("read", || self.store.get(key.as_str())).await??;
        match self.accepted(&value, key, method) {
            Ok(entry) => Some(entry),
            Err(rejected) => {
                rejected.log(key);
                self.remove_quietly(key).await;
                None
            }
        }
    }

    /// [`load`](Self::load) from a store that can answer without waiting;
    /// `None` when it can't, its breaker is open, or an entry must be
    /// dropped (the usual lookup drops it).
    pub(super) fn load_at_once(&self, key: &CacheKey, method: &Method, request_headers: &HeaderMap) -> Option<Lookup> {
        if self.breaker.is_open() {
            return None;
        }
        let load_one = |key: &CacheKey| match self.store.get_now(key.as_str())? {
            Some(value) => self.accepted(&value, key, method).ok().map(Some),
            None => Some(None),
        };
        Some(match self.first_read(load_one(key)?, key, request_headers) {
            Ok(lookup) => lookup,
            Err(variant_key) => self.variant_read(load_one(&variant_key)?, request_headers),
        })
    }

    /// A stored value decoded, if it was stored for this key and method.
    fn accepted(&self, value: &StoredValue, key: &CacheKey, method: &Method) -> Result<Arc<StoredResponse>, Rejected> {
        match value.decoded(|bytes| StoredResponse::decode_with(bytes, self.options.signer.as_ref())) {
            Ok(entry) if entry.key == key.as_str() && entry.method == method => Ok(entry),
            Ok(_) => Err(Rejected::OtherRequest),
            Err(DecodeError::UnsupportedVersion(version)) => Err(Rejected::OtherVersion(version)),
            Err(error) => Err(Rejected::Undecodable(error)),
        }
    }

    pub(super) async fn remove_quietly(&self, key: &CacheKey) {
        self.call_store("remove", || self.store.remove(key.as_str())).await;
    }

    /// Whether a stored entry answers a request with these headers, given
    /// the response's `Vary`.
    pub(super) fn matches_vary(&self, entry: &StoredResponse, request_headers: &HeaderMap) -> bool {
        entry.vary_names.is_empty()
            || KeyRules::vary_digest(&entry.vary_names, request_headers, self.known_secret()) == entry.vary_digest
    }

    /// Stores an entry under its request's key, and under its `Vary`
    /// variant's key so other variants don't replace it, unless its URL was
    /// invalidated since the request was planned; whether it was stored.
    pub(super) async fn save(&self, key: &CacheKey, entry: &mut StoredResponse, fence: &Fence) -> bool {
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

    pub(super) async fn put(&self, entry: &StoredResponse) -> bool {
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
        let stored = self.call_store("write", || self.store.put(record)).await.is_some();
        if stored {
            metrics::counter!(crate::metrics::STORED, "store" => self.store.kind()).increment(1);
        }
        stored
    }

    /// A store call, given up (as a failure) past the store's deadline.
    pub(super) async fn within_deadline<T>(
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
    pub(super) async fn call_store<'a, T, F>(&'a self, operation: &'static str, call: impl FnOnce() -> F) -> Option<T>
    where
        F: Future<Output = Result<T, StoreError>> + 'a,
    {
        let permit = self.breaker.permit()?;
        let result = self.within_deadline(operation, call()).await;
        match result {
            Ok(value) => {
                if permit.succeeded() == Transition::Closed {
                    self.breaker_gauge(false);
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
                metrics::counter!(crate::metrics::STORE_ERRORS, "store" => self.store.kind(), "operation" => operation)
                    .increment(1);
                if permit.failed() == Transition::Opened {
                    self.breaker_gauge(true);
                    tracing::warn!(%error, operation, "cache store failed; requests go to the origin, and the store is retried with backoff until it answers");
                    self.watch_for_recovery();
                }
                None
            }
        }
    }

    /// Sets the breaker gauge: 1 while the store is skipped.
    fn breaker_gauge(&self, open: bool) {
        metrics::gauge!(crate::metrics::BREAKER_OPEN, "store" => self.store.kind()).set(if open { 1.0 } else { 0.0 });
    }

    /// Pings a failed store in the background, if it can be pinged, and
    /// closes the breaker as soon as it answers (once the invalidations it
    /// missed are applied), rather than when the backoff runs out.
    pub(super) fn watch_for_recovery(&self) {
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
                            engine.breaker_gauge(false);
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
}
