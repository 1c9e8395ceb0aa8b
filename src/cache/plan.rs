//! Deciding what to do with a request before it is sent: answer from the
//! store, let it through, or fetch (alone, or for everyone waiting).

use super::*;

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

impl Plan {
    /// The key and what was decided, as the request's span shows them.
    pub(super) fn decision(&self) -> (Option<&CacheKey>, &'static str) {
        match self {
            Plan::Respond(answer) => Self::decision_of(answer),
            Plan::RespondAndRefresh(answer, _) => (answer.info.cache_key.as_ref(), "stale_while_revalidate"),
            Plan::Pass(pass) => (pass.cache_key.as_ref(), "pass"),
            Plan::Fetch(fetch) if fetch.conditional.is_empty() => (Some(&fetch.key), "fetch"),
            Plan::Fetch(fetch) => (Some(&fetch.key), "revalidate"),
        }
    }

    /// The decision of an answer from the cache.
    pub(super) fn decision_of(answer: &Answer) -> (Option<&CacheKey>, &'static str) {
        (
            answer.info.cache_key.as_ref(),
            match answer.info.status {
                _ if answer.info.collapsed => "coalesced",
                CacheStatus::Hit => "hit",
                CacheStatus::Stale => "stale",
                CacheStatus::Revalidated | CacheStatus::Miss => "only_if_cached_miss",
            },
        )
    }
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
    pub(super) invalidate: Option<Url>,
    pub(super) forward: Forward,
    pub(super) cache_key: Option<CacheKey>,
}

impl Pass {
    pub(super) fn new(forward: Forward) -> Self {
        Self {
            invalidate: None,
            forward,
            cache_key: None,
        }
    }
}

/// A request the cache wants the origin's answer to.
pub(crate) struct Fetch {
    pub(super) key: CacheKey,
    pub(super) url: String,
    pub(super) request: http::request::Parts,
    pub(super) configured: Option<ExpireAfter>,
    pub(super) stale: Option<Arc<StoredResponse>>,
    pub(super) conditional: HeaderMap,
    /// Set when this request fetches on behalf of concurrent ones.
    pub(super) leader: Option<Leader>,
    /// Tags from the request's [`CacheTags`] extension.
    pub(super) tags: Vec<String>,
    pub(super) forward: Forward,
    /// A `HEAD` answered from, and refreshing, the stored `GET`.
    pub(super) head: bool,
    pub(super) requested_at: SystemTime,
    pub(super) fence: Fence,
}

impl Fetch {
    /// Headers the adapter adds to the request before sending it.
    pub(crate) fn conditional_headers(&self) -> &HeaderMap {
        &self.conditional
    }
}

/// Request preconditions the cache cannot evaluate for the origin: such
/// requests go through untouched.
pub(super) const PRECONDITIONS: &[HeaderName] = &[header::IF_MATCH, header::IF_UNMODIFIED_SINCE, header::IF_RANGE];

/// Which of the headers the cache's rules read a request carries, found in
/// one pass: most requests carry none of them, and a pass over a few
/// headers costs less than a lookup per name.
#[derive(Clone, Copy, Default)]
struct Present {
    cache_control: bool,
    pragma: bool,
    /// One of [`PRECONDITIONS`].
    precondition: bool,
    /// `If-None-Match` or `If-Modified-Since`: the client validates its own
    /// copy (RFC 9111 §4.3.2).
    validating: bool,
}

impl Present {
    fn in_request(headers: &HeaderMap) -> Self {
        let mut present = Self::default();
        for name in headers.keys() {
            if name == header::CACHE_CONTROL {
                present.cache_control = true;
            } else if name == header::PRAGMA {
                present.pragma = true;
            } else if name == header::IF_NONE_MATCH || name == header::IF_MODIFIED_SINCE {
                present.validating = true;
            } else if PRECONDITIONS.contains(name) {
                present.precondition = true;
            }
        }
        present
    }
}

/// Whether the cache takes part in a request.
pub(super) enum Considered<'b> {
    /// It does, in this mode, keying this body.
    Cacheable(CacheMode, &'b [u8]),
    /// It lets the request through.
    LetThrough(Pass),
}

/// What planning knows of a request once it is keyed.
#[derive(Clone)]
pub(super) struct Planned<'r> {
    method: &'r Method,
    url: &'r Url,
    headers: &'r HeaderMap,
    extensions: &'r http::Extensions,
    mode: CacheMode,
    /// A `HEAD` answered from, and refreshing, the stored `GET`.
    head: bool,
    /// The client validates its own copy.
    validating: bool,
}

/// A request the cache takes part in, keyed, before its lookup.
struct Keyed<'r> {
    planned: Planned<'r>,
    directives: RequestDirectives,
    key: CacheKey,
}

impl Keyed<'_> {
    /// The method the stored entry was filed under: a `HEAD` looks up the `GET`.
    fn lookup_method(&self) -> &Method {
        if self.planned.head {
            &Method::GET
        } else {
            self.planned.method
        }
    }

    /// What was learned, without the borrowed request.
    fn into_early(self, lookup: Option<Lookup>) -> Box<Early> {
        let Planned {
            mode, head, validating, ..
        } = self.planned;
        Box::new(Early {
            mode,
            head,
            validating,
            directives: self.directives,
            key: self.key,
            lookup,
        })
    }
}

/// What [`Engine::answer_at_once`] learned of a request it could not
/// answer, handed on to [`Engine::plan`] so the request is keyed, and the
/// store asked, once.
pub(crate) struct Early {
    mode: CacheMode,
    head: bool,
    validating: bool,
    directives: RequestDirectives,
    key: CacheKey,
    /// The store's answer, when it gave one at once.
    lookup: Option<Lookup>,
}

impl Early {
    /// The keyed request again, with the request it was learned from.
    fn keyed<'r>(
        self,
        method: &'r Method,
        url: &'r Url,
        headers: &'r HeaderMap,
        extensions: &'r http::Extensions,
    ) -> (Keyed<'r>, Option<Lookup>) {
        let Early {
            mode,
            head,
            validating,
            directives,
            key,
            lookup,
        } = self;
        let planned = Planned {
            method,
            url,
            headers,
            extensions,
            mode,
            head,
            validating,
        };
        (
            Keyed {
                planned,
                directives,
                key,
            },
            lookup,
        )
    }
}

impl Engine {
    /// The answer to a request the store can give at once, without waiting
    /// on anything (a fresh entry of a store in this process): the same
    /// answer [`plan`](Self::plan) would give, decided by the same rules,
    /// its decision noted on the request's span and counted. Otherwise
    /// what was learned, for `plan` to go on from (`None` when the request
    /// must be planned from the start). Adapters try it first, so that a
    /// hit costs no asynchronous machinery. The body must be empty.
    pub(crate) fn answer_at_once(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Answer, Option<Box<Early>>> {
        // Until the store's secret is known, keys aren't final.
        let Some(secret) = self.secret.get() else {
            return Err(None);
        };
        let Ok(keyed) = self.keyed(method, url, headers, Some(&[]), extensions, secret) else {
            return Err(None);
        };
        if keyed.planned.mode == CacheMode::ForceRefresh {
            return Err(Some(keyed.into_early(None)));
        }
        let timer = crate::trace::StoreTimer::start();
        let Some(lookup) = self.load_at_once(&keyed.key, keyed.lookup_method(), headers) else {
            return Err(Some(keyed.into_early(None)));
        };
        timer.stop();
        let now = SystemTime::now();
        match self.answer_from_store(
            &keyed.planned,
            &keyed.directives,
            lookup.entry.as_deref(),
            &keyed.key,
            now,
        ) {
            Some(Plan::Respond(answer)) => {
                let (key, decision) = Plan::decision_of(&answer);
                crate::trace::decision(key, decision);
                self.answered(&answer.info);
                Ok(answer)
            }
            _ => Err(Some(keyed.into_early(Some(lookup)))),
        }
    }

    /// What planning knows before the lookup: whether the cache takes part
    /// (else how it lets the request through, `Err`), the mode, the
    /// request's directives and the key.
    fn keyed<'r>(
        &self,
        method: &'r Method,
        url: &'r Url,
        headers: &'r HeaderMap,
        body: Option<&[u8]>,
        extensions: &'r http::Extensions,
        secret: &KeySecret,
    ) -> Result<Keyed<'r>, Box<Pass>> {
        let present = Present::in_request(headers);
        let (mode, body) = match self.considered(method, url, headers, present, body, extensions) {
            Considered::Cacheable(mode, body) => (mode, body),
            Considered::LetThrough(pass) => return Err(Box::new(pass)),
        };
        let directives = if present.cache_control {
            RequestDirectives::parse(headers)
        } else {
            RequestDirectives::default()
        };
        let no_cache = (present.cache_control || present.pragma) && has_no_cache(headers);
        let mode = if mode == CacheMode::Default && no_cache {
            CacheMode::Refresh
        } else {
            mode
        };
        // HEAD is answered from, and refreshes, the stored GET (RFC 9111 §4.3.5).
        let head = method == Method::HEAD && self.rules.allows_method(&Method::GET);
        let head_of_request = RequestHead {
            method: if head { &Method::GET } else { method },
            url,
            headers,
            body,
        };
        let key = self.keys.key(&head_of_request, secret);
        Ok(Keyed {
            planned: Planned {
                method,
                url,
                headers,
                extensions,
                mode,
                head,
                validating: present.validating,
            },
            directives,
            key,
        })
    }

    /// Decides what to do with a request. `body` is `None` when the body is a
    /// stream that cannot be read ahead: such requests bypass the cache.
    /// `early` is what [`answer_at_once`](Self::answer_at_once) learned of
    /// this request, if it was asked.
    ///
    /// In phases: requests the cache leaves alone; the lookup; an answer
    /// from the store; a stale answer with a background refresh; and a
    /// fetch, alone or for everyone waiting on the same key.
    pub(crate) async fn plan(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        extensions: &http::Extensions,
        early: Option<Box<Early>>,
    ) -> Plan {
        let (keyed, looked_up) = match early {
            Some(early) => early.keyed(method, url, headers, extensions),
            None => {
                let secret = self.secret().await;
                match self.keyed(method, url, headers, body, extensions, secret) {
                    Ok(keyed) => (keyed, None),
                    Err(pass) => return Plan::Pass(*pass),
                }
            }
        };
        let now = SystemTime::now();
        let lookup = match (keyed.planned.mode, looked_up) {
            (CacheMode::ForceRefresh, _) => Lookup {
                entry: None,
                vary_miss: false,
            },
            (_, Some(lookup)) => lookup,
            (_, None) => {
                let timer = crate::trace::StoreTimer::start();
                let lookup = self.load(&keyed.key, keyed.lookup_method(), headers).await;
                timer.stop();
                lookup
            }
        };
        let Keyed {
            planned,
            directives,
            key,
        } = keyed;
        let Lookup { entry, vary_miss } = lookup;
        let (mode, head) = (planned.mode, planned.head);
        if let Some(answered) = self.answer_from_store(&planned, &directives, entry.as_deref(), &key, now) {
            return answered;
        }
        let forward = match (mode, &entry) {
            (CacheMode::Refresh | CacheMode::ForceRefresh, _) => Forward::Request,
            (_, Some(_)) => Forward::Stale,
            (_, None) if vary_miss => Forward::VaryMiss,
            (_, None) => Forward::UriMiss,
        };
        if let Some(refreshing) = self.serve_stale_while_revalidating(&planned, &entry, &key, forward, now) {
            return refreshing;
        }
        let leader = match mode {
            CacheMode::ForceRefresh => None,
            _ if head => None,
            _ => match self.lead_or_follow(&key, headers, forward).await {
                Ok(leader) => leader,
                Err(answered) => return answered,
            },
        };
        Plan::Fetch(self.new_fetch(planned, key, forward, entry, leader))
    }

    /// Leads the fetch for `key`, or follows the one under way: the
    /// leader's response when it can be shared (`Err`, the answer), else
    /// `Ok(None)` to fetch alone.
    async fn lead_or_follow(
        &self,
        key: &CacheKey,
        headers: &HeaderMap,
        forward: Forward,
    ) -> Result<Option<Leader>, Plan> {
        match self.inflight.join(key) {
            Turn::Lead(leader) => Ok(Some(leader)),
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
                        ..served(&shared, key.clone(), CacheStatus::Hit, now)
                    };
                    return Err(Plan::Respond(self.answer(&shared, info, now, false, None)));
                }
                // The leader had nothing to share: fetch alone.
                Ok(None)
            }
        }
    }

    /// Whether the cache takes part: requests it lets through untouched,
    /// and how; else the mode and the body to key.
    fn considered<'b>(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        present: Present,
        body: Option<&'b [u8]>,
        extensions: &http::Extensions,
    ) -> Considered<'b> {
        let mode = extensions.get::<CacheMode>().copied().unwrap_or_default();
        if mode == CacheMode::NoStore {
            return Considered::LetThrough(Pass::new(Forward::Bypass));
        }
        if !self.rules.allows_method(method) {
            return Considered::LetThrough(Pass {
                invalidate: (!method.is_safe()).then(|| url.clone()),
                ..Pass::new(Forward::Method)
            });
        }
        let Some(body) = body else {
            return Considered::LetThrough(Pass::new(Forward::Bypass));
        };
        if present.precondition || (present.cache_control && has_directive(headers, "no-store")) {
            return Considered::LetThrough(Pass::new(Forward::Request));
        }
        Considered::Cacheable(mode, body)
    }

    /// The answer when the store has one the request accepts, or when the
    /// origin must not be asked (`only-if-cached`), or when the client
    /// validates its own copy and nothing fresh is here to answer it.
    fn answer_from_store(
        &self,
        planned: &Planned<'_>,
        directives: &RequestDirectives,
        entry: Option<&StoredResponse>,
        key: &CacheKey,
        now: SystemTime,
    ) -> Option<Plan> {
        let mode = planned.mode;
        let validating = planned.validating;
        if let Some(entry) = entry {
            // `OnlyIfCached` takes whatever is stored; otherwise the request's
            // directives decide between fresh, acceptably stale, or the origin.
            let status = match mode {
                CacheMode::OnlyIfCached if entry.is_expired(now) => Some(CacheStatus::Stale),
                CacheMode::OnlyIfCached => Some(CacheStatus::Hit),
                CacheMode::Default if self.is_fresh_enough(entry, directives, now) => Some(CacheStatus::Hit),
                CacheMode::Default if self.accepts_stale(entry, directives, now) => Some(CacheStatus::Stale),
                _ => None,
            };
            if let Some(status) = status {
                let info = CacheInfo {
                    detail: (status == CacheStatus::Stale && mode == CacheMode::OnlyIfCached)
                        .then_some("only-if-cached"),
                    ..served(entry, key.clone(), status, now)
                };
                return Some(Plan::Respond(self.answer(
                    entry,
                    info,
                    now,
                    planned.head,
                    validating.then_some(planned.headers),
                )));
            }
        }
        if mode == CacheMode::OnlyIfCached || directives.only_if_cached {
            return Some(Plan::Respond(self.gateway_timeout(key.clone())));
        }
        if validating {
            // Nothing fresh to validate against here: the origin decides.
            return Some(Plan::Pass(Pass {
                cache_key: Some(key.clone()),
                ..Pass::new(Forward::Request)
            }));
        }
        None
    }

    /// A stale answer now and one background refresh per key, when the
    /// entry's `stale-while-revalidate` (or the cache's) allows it.
    fn serve_stale_while_revalidating(
        &self,
        planned: &Planned<'_>,
        entry: &Option<Arc<StoredResponse>>,
        key: &CacheKey,
        forward: Forward,
        now: SystemTime,
    ) -> Option<Plan> {
        let stale = entry.as_ref()?;
        if planned.mode != CacheMode::Default
            || planned.head
            || !stale.is_expired(now)
            || !self.may_serve_stale(
                stale,
                now,
                self.options.stale_while_revalidate,
                "stale-while-revalidate",
            )
        {
            return None;
        }
        let info = CacheInfo {
            detail: Some("stale-while-revalidate"),
            ..served(stale, key.clone(), CacheStatus::Stale, now)
        };
        let response = self.answer(stale, info, now, false, None);
        Some(match self.inflight.join(key) {
            Turn::Lead(leader) => Plan::RespondAndRefresh(
                response,
                self.new_fetch(planned.clone(), key.clone(), forward, entry.clone(), Some(leader)),
            ),
            Turn::Follow(_) => Plan::Respond(response),
        })
    }

    /// The fetch of a planned request: its conditional headers, expiry
    /// rules, tags and fence.
    fn new_fetch(
        &self,
        planned: Planned<'_>,
        key: CacheKey,
        forward: Forward,
        stale: Option<Arc<StoredResponse>>,
        leader: Option<Leader>,
    ) -> Box<Fetch> {
        let Planned {
            method,
            url,
            headers,
            extensions,
            head,
            ..
        } = planned;
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
        // Only a fetch needs the normalized URL: a hit never builds it.
        let normalized = self.keys.normalize_url(url);
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
    }

    /// Whether a stored response may answer a request without the origin:
    /// fresh, and within the request's `max-age` and `min-fresh`.
    pub(super) fn is_fresh_enough(
        &self,
        entry: &StoredResponse,
        directives: &RequestDirectives,
        now: SystemTime,
    ) -> bool {
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
    pub(super) fn accepts_stale(
        &self,
        entry: &StoredResponse,
        directives: &RequestDirectives,
        now: SystemTime,
    ) -> bool {
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
                let info = CacheInfo {
                    detail: Some("stale-if-error"),
                    ..served(stale, fetch.key.clone(), CacheStatus::Stale, now)
                };
                self.answer(stale, info, now, fetch.head, None)
            })
    }

    pub(super) fn may_serve_stale(
        &self,
        entry: &StoredResponse,
        now: SystemTime,
        window: StaleWindow,
        directive: &str,
    ) -> bool {
        !self.rules.forbids_stale(&entry.headers)
            && window.allows(
                staleness(entry, now),
                &self.rules.directives_of(&entry.headers),
                directive,
            )
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NAMES: &[&str] = &[
        "cache-control",
        "pragma",
        "if-none-match",
        "if-modified-since",
        "if-match",
        "if-unmodified-since",
        "if-range",
        "host",
        "accept",
        "x-cache-control",
    ];

    proptest! {
        /// One pass over the headers finds what a lookup per name finds.
        #[test]
        fn one_pass_finds_what_lookups_find(names in proptest::collection::vec(proptest::sample::select(NAMES), 0..8)) {
            let mut headers = HeaderMap::new();
            for name in names {
                headers.append(HeaderName::from_static(name), HeaderValue::from_static("x"));
            }
            let present = Present::in_request(&headers);
            prop_assert_eq!(present.cache_control, headers.contains_key(header::CACHE_CONTROL));
            prop_assert_eq!(present.pragma, headers.contains_key(header::PRAGMA));
            prop_assert_eq!(
                present.validating,
                headers.contains_key(header::IF_NONE_MATCH) || headers.contains_key(header::IF_MODIFIED_SINCE)
            );
            prop_assert_eq!(present.precondition, PRECONDITIONS.iter().any(|name| headers.contains_key(name)));
        }
    }
}
