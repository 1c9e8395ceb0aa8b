//! Taking the origin's response: storing it when the rules allow, answering
//! a `304` from the stored entry, and reporting requests let through.

use super::*;

/// What storing a response needs once its body is read.
pub(super) struct PendingEntry {
    pub(super) key: CacheKey,
    pub(super) url: String,
    pub(super) request: http::request::Parts,
    pub(super) expires: Option<SystemTime>,
    pub(super) initial_age: Duration,
    pub(super) tags: Vec<String>,
    pub(super) fence: Fence,
    pub(super) leader: Option<Leader>,
    pub(super) now: SystemTime,
}

/// Bodies up to this size are read whole before the cache answers; larger
/// ones stream on at once (and are stored when they end, if they fit in
/// `max_body_size`).
pub(super) const READ_BEFORE_STREAMING: usize = 64 * 1024;

/// Headers a `304 Not Modified` must not overwrite in the stored response.
pub(super) const KEPT_ON_REVALIDATION: &[HeaderName] = &[
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::CONTENT_RANGE,
];

/// Headers that describe one connection, not the response: never stored
/// (RFC 9111 §3.1), along with any header the `Connection` header names.
pub(super) const HOP_BY_HOP: &[&str] = &[
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

/// The response headers worth storing: without hop-by-hop headers, those
/// the `Connection` header names (RFC 9111 §3.1), or `Age`, which is
/// computed afresh on every answer.
pub(super) fn storable_headers(headers: &HeaderMap) -> HeaderMap {
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
pub(super) fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect()
}

/// Updates stored headers from a `304` or a `HEAD` (RFC 9111 §3.2), leaving
/// alone those that describe the stored body.
pub(super) fn merge_headers(stored: &mut HeaderMap, update: &HeaderMap) {
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

/// Says once per response, at `info`, why a cacheable response was not kept.
pub(super) fn too_large_to_cache(url: &str, max_body_size: usize) {
    tracing::info!(%url, max_body_size, "not cached: the body is larger than max_body_size");
}

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// `If-None-Match` / `If-Modified-Since` from a stored entry's validators.
pub(super) fn conditional_headers(entry: &StoredResponse) -> HeaderMap {
    let mut conditional = HeaderMap::new();
    if let Some(etag) = entry.headers.get(header::ETAG) {
        conditional.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(last_modified) = entry.headers.get(header::LAST_MODIFIED) {
        conditional.insert(header::IF_MODIFIED_SINCE, last_modified.clone());
    }
    conditional
}

impl Engine {
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
        if !fetch.conditional.is_empty() {
            crate::metrics::revalidated(response.status() == StatusCode::NOT_MODIFIED);
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
                self.annotate_not_stored(&mut parts, key, forward);
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
        self.keep(pending, parts, body, forward).await
    }

    /// Answers with a response the rules let be stored, and stores it.
    async fn keep<B>(
        self: &Arc<Self>,
        pending: PendingEntry,
        mut parts: http::response::Parts,
        body: B,
        forward: Forward,
    ) -> Result<http::Response<CacheBody<B>>, B::Error>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let max_body_size = self.options.max_body_size;
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
            self.annotate_not_stored(&mut parts, info_key, forward);
            return Ok(http::Response::from_parts(parts, CacheBody::streaming(read, rest)));
        }
        // Kept as the origin sent them, before the answer is marked.
        let (status, headers) = (parts.status, parts.headers.clone());
        self.annotate_not_stored(&mut parts, info_key, forward);
        let engine = Arc::clone(self);
        let recorder = Recorder::new(read.clone(), max_body_size, move |copy| match copy {
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

    /// Marks an answer the cache did not store.
    fn annotate_not_stored(&self, parts: &mut http::response::Parts, key: CacheKey, forward: Forward) {
        let info = CacheInfo {
            forward: Some(forward),
            forward_status: Some(parts.status),
            ..miss(Some(key), None)
        };
        self.annotate(&mut parts.headers, &mut parts.extensions, info);
    }

    /// Stores a response read whole, and shares it with the requests that
    /// waited for it; whether it was stored, and the entry.
    pub(super) async fn store_entry(
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
    pub(super) async fn finish_head<B>(
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
    pub(super) async fn revalidated(
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

    pub(super) fn revalidated_answer(
        &self,
        entry: &StoredResponse,
        key: CacheKey,
        stored: bool,
        now: SystemTime,
    ) -> Answer {
        let info = CacheInfo {
            forward: Some(Forward::Stale),
            forward_status: Some(StatusCode::NOT_MODIFIED),
            stored,
            ..served(entry, key, CacheStatus::Revalidated, now)
        };
        self.answer(entry, info, now, false, None)
    }

    /// The request's tags and those in the response's tag headers, each once.
    pub(super) fn tags(&self, mut tags: Vec<String>, response_headers: &HeaderMap) -> Vec<String> {
        tags.extend(tags_in(response_headers, &self.options.tag_headers));
        tags.sort();
        tags.dedup();
        tags
    }
}
