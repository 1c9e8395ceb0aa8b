//! One fetch: slots, the request with its retries, the download to a
//! temporary blob with its limits, and recording how it ended.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use jiff::Timestamp;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Worker;
use crate::blobs::{BlobWriter, TempBlob};
use crate::guard;
use crate::index::{Finish, IndexError};
use crate::library::failed;
use edgecache_base::net::AfterFailure;
use edgecache_versions::{Resource, Strategy, Version, encode_body, header_map, url_with_query};

/// At most this many cache tags are recorded per version.
const MAX_CACHE_TAGS: usize = 128;

/// The stretch over which `min_transfer_rate` is measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// A fetch's slots: its host's and the server's.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// How often, in bytes written, a download checks the free space again.
const SPACE_CHECK_EVERY: u64 = 64 << 20;

/// Response headers not kept with a version: per-connection, or meant for
/// the server's own session with the origin.
fn is_kept(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "set-cookie"
            | "content-length"
    )
}

impl Worker {
    fn host_slots(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Drop idle hosts so the map stays small.
        hosts.retain(|_, slots| Arc::strong_count(slots) > 1);
        hosts
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_host.max(1))))
            .clone()
    }

    async fn permits(&self, host: &str) -> Option<Permits> {
        let host = self.host_slots(host).acquire_owned().await.ok()?;
        let global = self.slots.clone().acquire_owned().await.ok()?;
        Some((host, global))
    }

    /// One fetch, committed and recorded; answers how it ended.
    pub(super) async fn run(self: &Arc<Self>, resource_id: &str, version_id: &str) -> Finish {
        let (finish, body) = match self.attempt(resource_id, version_id).await {
            Ok(fetched) => fetched,
            Err(error) => (failed(error), None),
        };
        if let Finish::Failed { error, .. } = &finish {
            tracing::warn!(resource = %resource_id, %error, "fetch failed");
        }
        self.library.commit(resource_id, version_id, finish, body).await
    }

    /// One fetch, with retries; everything but recording it. Answers how it
    /// ended, and the new body under its temporary name.
    async fn attempt(&self, resource_id: &str, version_id: &str) -> Result<(Finish, Option<TempBlob>), String> {
        let now = Timestamp::now();
        let index_error = |error: IndexError| error.to_string();
        // The resource and its newest ready version, in one read.
        let (resource, ready) = self
            .index
            .selectable(resource_id, now)
            .await
            .map_err(index_error)?
            .ok_or("the resource was deleted")?;
        let latest = ready.into_iter().next();
        let url = request_url(&resource)?;
        if !self.allow_private {
            guard::check_literal(&url).map_err(|refused| refused.to_string())?;
        }
        let conditional = conditional_headers(&resource.strategy, latest.as_ref(), now);
        let mut clock = FetchClock::new(self.limits.timeout);
        let (response, _permits) = self.send(&resource, version_id, &url, &conditional, &clock).await?;
        let status = response.status();
        let validators = |headers: &HeaderMap| {
            let text = |name| {
                headers
                    .get(name)
                    .and_then(|value: &HeaderValue| value.to_str().ok())
                    .map(str::to_owned)
            };
            (text(http::header::ETAG), text(http::header::LAST_MODIFIED))
        };
        if status == StatusCode::NOT_MODIFIED
            && let Some(latest) = latest.as_ref().filter(|_| !conditional.is_empty())
        {
            let (etag, last_modified) = validators(response.headers());
            let unchanged = Finish::Unchanged {
                latest: latest.id.clone(),
                etag,
                last_modified,
            };
            return Ok((unchanged, None));
        }
        if !status.is_success() {
            let refused = Finish::Failed {
                status_code: Some(status.as_u16()),
                error: format!("the origin answered {status}"),
            };
            return Ok((refused, None));
        }
        let headers = response.headers().clone();
        if let (Some(length), rate @ 1..) = (response.content_length(), self.limits.min_transfer_rate) {
            clock.extend(Duration::from_secs(length / rate));
        }
        let temp = self.download(version_id, response, &clock).await?;
        if let Some(latest) = latest.filter(|latest| latest.sha256.as_deref() == Some(temp.sha256.as_str())) {
            self.library.blobs.discard(temp).await;
            // The same body under new validators: ask with those next time.
            let (etag, last_modified) = validators(&headers);
            let unchanged = Finish::Unchanged {
                latest: latest.id,
                etag,
                last_modified,
            };
            return Ok((unchanged, None));
        }
        let mut version = Version::from_origin(version_id.to_owned(), status.as_u16(), &headers, is_kept, now);
        version.size = Some(temp.size);
        version.sha256 = Some(temp.sha256.clone());
        // The origin's word: only tags a purge could name, and not too many.
        version.cache_tags = edgecache_base::tags::tags_in(&headers, &self.tag_headers)
            .filter(|tag| edgecache_base::check::check_tag(tag).is_ok())
            .take(MAX_CACHE_TAGS)
            .collect();
        version.cache_tags.sort();
        version.cache_tags.dedup();
        Ok((Finish::Ready(Box::new(version)), Some(temp)))
    }

    /// Sends the request, retrying transport errors, 429 and 5xx with
    /// backoff (honouring `Retry-After`). Each attempt takes the host's and
    /// the server's slots, and gives them back while it waits to retry;
    /// the answer comes with the slots of the attempt that got it.
    async fn send(
        &self,
        resource: &Resource,
        version_id: &str,
        url: &url::Url,
        conditional: &HeaderMap,
        clock: &FetchClock,
    ) -> Result<(reqwest::Response, Permits), String> {
        let method = Method::from_bytes(resource.method.as_bytes()).map_err(|_| "the stored method is invalid")?;
        let mut headers = header_map(&resource.headers);
        headers.extend(conditional.clone());
        let body = encode_body(resource.body.as_ref(), &mut headers);
        let host = host_key(url);
        // The slots of the attempt under way: given back while it waits to
        // retry, kept with the answer.
        let held: std::sync::Mutex<Option<Permits>> = std::sync::Mutex::new(None);
        let hold = |permits: Option<Permits>| *held.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = permits;
        let attempt = |made: u32| {
            let (method, headers, body, host, clock, hold) = (&method, &headers, &body, &host, &*clock, &hold);
            async move {
                let Some(permits) = self.permits(host).await else {
                    return Err(Failure::last("the server is shutting down"));
                };
                hold(Some(permits));
                if made == 0 {
                    self.index
                        .set_downloading(version_id)
                        .await
                        .map_err(|error| Failure::last(error.to_string()))?;
                }
                clock.start();
                let mut request = self
                    .client
                    .request(method.clone(), url.clone())
                    .headers(headers.clone());
                if let Some(body) = body {
                    request = request.body(body.clone());
                }
                match clock.within(request.send()).await {
                    Err(out_of_time) => Err(Failure::last(out_of_time)),
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(error)) => {
                        // A refused private address won't change by retrying.
                        let retryable = !crate::guard::is_refusal(&error);
                        let message = edgecache_base::net::error_chain(&error);
                        Err(Failure { message, retryable })
                    }
                }
            }
        };
        let after_failure = |outcome: &Result<reqwest::Response, Failure>, next: Option<Duration>| {
            let Some(delay) = next else {
                return AfterFailure::Keep;
            };
            hold(None);
            let failure = match outcome {
                Ok(response) => format!("the origin answered {}", response.status()),
                Err(failure) => failure.message.clone(),
            };
            if clock.remaining().is_some_and(|remaining| remaining < delay) {
                return AfterFailure::End(Err(Failure::last(format!(
                    "{failure}; no time left to retry ({})",
                    clock.limit()
                ))));
            }
            tracing::debug!(%failure, ?delay, "retrying a fetch");
            AfterFailure::Retry
        };
        let attempts = edgecache_base::net::Attempts {
            backoff: self.limits.backoff,
            max: self.limits.retries.saturating_add(1),
        };
        let (outcome, _) =
            edgecache_base::net::send_with_retry(attempts, &verdict, attempt, after_failure, std::future::pending)
                .await;
        let response = outcome.map_err(|failure| failure.message)?;
        let permits = held
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .ok_or("the fetch lost its slots")?;
        Ok((response, permits))
    }

    /// Why writing `needed` more bytes would leave too little free space,
    /// if it would.
    fn short_of_space(&self, needed: u64) -> Option<String> {
        let floor = self.limits.min_free_space;
        let free = self.library.blobs.free_space()?;
        (free < floor.saturating_add(needed)).then(|| {
            format!(
                "the disk holding the data directory has {} MiB free; the server keeps {} MiB free (--min-free-space){}",
                free >> 20,
                floor >> 20,
                if needed > 0 {
                    format!(" and the body is {} MiB", needed >> 20)
                } else {
                    String::new()
                }
            )
        })
    }

    /// Streams the body to a temporary blob; nothing is kept of a body that
    /// fails.
    async fn download(
        &self,
        version_id: &str,
        response: reqwest::Response,
        clock: &FetchClock,
    ) -> Result<TempBlob, String> {
        let mut writer = self
            .library
            .blobs
            .writer(version_id)
            .await
            .map_err(|error| format!("could not start writing the body: {error}"))?;
        match self.copy_body(&mut writer, response, clock).await {
            Ok(()) => writer
                .finish()
                .await
                .map_err(|error| format!("could not complete the body: {error}")),
            Err(error) => {
                writer.abort().await;
                Err(error)
            }
        }
    }

    /// Copies the body into `writer` within the size limit, the free space,
    /// the deadline and the minimum transfer rate; what broke it otherwise.
    async fn copy_body(
        &self,
        writer: &mut BlobWriter,
        mut response: reqwest::Response,
        clock: &FetchClock,
    ) -> Result<(), String> {
        let limit = self.limits.max_body_size;
        let too_large = || format!("the body is larger than the server's limit of {limit} bytes (--max-body-size)");
        if response.content_length().is_some_and(|length| length > limit) {
            return Err(too_large());
        }
        if let Some(short) = self.short_of_space(response.content_length().unwrap_or(0)) {
            return Err(short);
        }
        let mut next_space_check = SPACE_CHECK_EVERY;
        let min_rate = self.limits.min_transfer_rate;
        let (mut window_start, mut window_bytes) = (tokio::time::Instant::now(), 0u64);
        loop {
            let window_end = window_start + RATE_WINDOW;
            let next = tokio::time::timeout_at(window_end, clock.within(response.chunk()));
            let chunk = match next.await {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(too_slow)) => return Err(format!("{too_slow} after {} bytes of the body", writer.size())),
                // A window passed without a chunk: judged below.
                Err(_) => Ok(Some(bytes::Bytes::new())),
            };
            if let Ok(Some(bytes)) = &chunk {
                window_bytes = window_bytes.saturating_add(bytes.len() as u64);
            }
            if matches!(chunk, Ok(Some(_))) && tokio::time::Instant::now() >= window_end {
                if min_rate > 0 && window_bytes < min_rate.saturating_mul(RATE_WINDOW.as_secs()) {
                    return Err(format!(
                        "the origin sent {window_bytes} bytes in {} s, slower than {min_rate} bytes/s (--min-transfer-rate), after {} bytes",
                        RATE_WINDOW.as_secs(),
                        writer.size()
                    ));
                }
                (window_start, window_bytes) = (tokio::time::Instant::now(), 0);
            }
            match chunk {
                Ok(Some(chunk)) => {
                    if writer.size().saturating_add(chunk.len() as u64) > limit {
                        return Err(too_large());
                    }
                    if writer.size() >= next_space_check {
                        next_space_check = writer.size().saturating_add(SPACE_CHECK_EVERY);
                        if let Some(short) = self.short_of_space(0) {
                            return Err(short);
                        }
                    }
                    writer
                        .write(&chunk)
                        .await
                        .map_err(|error| format!("could not write the body: {error}"))?;
                }
                Ok(None) => return Ok(()),
                Err(error) => {
                    return Err(format!(
                        "the body broke off after {} bytes: {}",
                        writer.size(),
                        edgecache_base::net::error_chain(&error)
                    ));
                }
            }
        }
    }
}

/// A fetch's deadline: it starts when the first attempt has its slots, and
/// covers retries and the body.
struct FetchClock {
    limit: Duration,
    /// Set by the first attempt that has its slots.
    deadline: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl FetchClock {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            deadline: std::sync::Mutex::new(None),
        }
    }

    /// Starts the clock, unless it runs already.
    fn deadline(&self) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
        self.deadline.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn start(&self) {
        let mut deadline = self.deadline();
        if deadline.is_none() {
            *deadline = tokio::time::Instant::now().checked_add(self.limit);
        }
    }

    /// More time, for a large body.
    fn extend(&mut self, by: Duration) {
        self.limit = self.limit.saturating_add(by);
        let mut deadline = self.deadline();
        *deadline = deadline.and_then(|deadline| deadline.checked_add(by));
    }

    fn remaining(&self) -> Option<Duration> {
        self.deadline()
            .map(|deadline| deadline.saturating_duration_since(tokio::time::Instant::now()))
    }

    fn limit(&self) -> String {
        format!("the fetch may take {} s (--fetch-timeout)", self.limit.as_secs())
    }

    /// `work`, or why it ran out of time.
    async fn within<T>(&self, work: impl Future<Output = T>) -> Result<T, String> {
        let deadline = *self.deadline();
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, work)
                .await
                .map_err(|_| format!("the fetch ran out of time: {}", self.limit())),
            None => Ok(work.await),
        }
    }
}

/// Why an attempt got no answer, and whether another could.
struct Failure {
    message: String,
    retryable: bool,
}

impl Failure {
    /// A failure retrying won't mend.
    fn last(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Whether an origin's answer or failure is worth another attempt: 429 and
/// 5xx (after their `Retry-After`, at most a minute) and retryable failures.
fn verdict(outcome: &Result<reqwest::Response, Failure>) -> edgecache_base::net::Verdict {
    match outcome {
        Ok(response) if edgecache_base::net::retryable_origin_status(response.status().as_u16()) => {
            edgecache_base::net::Verdict::Again(edgecache_base::net::retry_after(
                response.headers(),
                Duration::from_secs(60),
            ))
        }
        Err(failure) if failure.retryable => edgecache_base::net::Verdict::Again(None),
        _ => edgecache_base::net::Verdict::Final,
    }
}

/// What limits fetches per host: the host and port, as a browser counts
/// connections.
fn host_key(url: &url::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

/// The resource's URL with its query.
pub(crate) fn request_url(resource: &Resource) -> Result<url::Url, String> {
    url_with_query(&resource.url, &resource.query).map_err(|error| format!("the stored URL is invalid: {error}"))
}

/// The validators a `remote_changed` check sends: the newest version's
/// `ETag` and `Last-Modified`, unless it is older than the fallback age
/// (then a full GET refreshes it).
fn conditional_headers(strategy: &Strategy, latest: Option<&Version>, now: Timestamp) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let (
        Strategy::RemoteChanged {
            fallback_max_age_seconds,
            ..
        },
        Some(latest),
    ) = (strategy, latest)
    else {
        return headers;
    };
    let age = latest
        .fetched_at
        .map_or(0, |fetched| now.duration_since(fetched).as_secs().max(0) as u64);
    if age >= *fallback_max_age_seconds {
        return headers;
    }
    if let Some(etag) = latest.etag.as_deref().and_then(|etag| HeaderValue::from_str(etag).ok()) {
        headers.insert(http::header::IF_NONE_MATCH, etag);
    }
    if let Some(date) = latest
        .last_modified
        .as_deref()
        .and_then(|date| HeaderValue::from_str(date).ok())
    {
        headers.insert(http::header::IF_MODIFIED_SINCE, date);
    }
    headers
}
