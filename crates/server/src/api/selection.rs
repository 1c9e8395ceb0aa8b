//! Choosing the version a request gets, and streaming its body.

use super::*;

/// Runs a selection: fetches first when asked (`fresh`, or an
/// `on_request` resource due a check), waits for a first version when
/// asked (`wait`), and picks among ready versions.
pub(super) async fn select(
    state: &Arc<AppState>,
    groups: &Groups,
    rid: &str,
    selection: &Selection,
) -> AppResult<Version> {
    let now = Timestamp::now();
    // The common case, a ready version at hand, takes one read.
    let (resource, mut ready) = match state.index.selectable(rid, now).await? {
        Some((resource, ready)) if groups.allows(&resource.group) => (resource, Some(ready)),
        _ => return Err(ApiError::not_found("resource")),
    };
    let stale_on_request = match resource.strategy {
        Strategy::OnRequest { min_interval_seconds } => resource.last_checked_at.is_none_or(|checked| {
            let interval = SignedDuration::from_secs(i64::try_from(min_interval_seconds).unwrap_or(i64::MAX));
            now.duration_since(checked) >= interval
        }),
        _ => false,
    };
    if selection.fresh || stale_on_request {
        ready = None;
        if let Some(fresh) = fetch_first(state, &resource.id, selection).await? {
            return Ok(fresh);
        }
    }
    // The common case: the first read has a match, and nothing else is asked.
    if let Some(version) = ready.as_deref().and_then(|ready| selection.pick(ready)) {
        return Ok(version.clone());
    }
    wait_for_match(state, &resource.id, selection).await
}

/// Fetches before selecting; with `fresh`, the version that fetch served
/// (or its failure). `on_request` serves what it has when the origin fails.
async fn fetch_first(state: &AppState, rid: &str, selection: &Selection) -> AppResult<Option<Version>> {
    match state.worker.fetch_and_wait(rid).await? {
        None => Err(ApiError::not_found("resource")),
        Some(Finish::Failed { error, .. }) if selection.fresh => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "fetch_failed",
            format!("the fresh fetch failed: {error}"),
        )),
        Some(finished) if selection.fresh => {
            let id = finished.served_version().unwrap_or_default();
            let version = state.index.version(rid, id, Timestamp::now()).await?;
            version
                .map(Some)
                .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "not_ready", "the fresh version was collected"))
        }
        Some(_) => Ok(None),
    }
}

/// Picks from the ready versions, waiting up to `wait` while a first
/// fetch is under way.
async fn wait_for_match(state: &AppState, rid: &str, selection: &Selection) -> AppResult<Version> {
    let wait = selection.wait.map(|seconds| Duration::from_secs(seconds).min(MAX_WAIT));
    let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
    let mut changes = state.worker.changes();
    loop {
        changes.mark_unchanged();
        // Asked before reading: a fetch records its version before it stops
        // counting as under way, so "not fetching" and "nothing ready" read
        // in this order mean there is nothing to wait for.
        let fetching = state.worker.is_fetching(rid).await?;
        let ready = match state.index.selectable(rid, Timestamp::now()).await? {
            Some((_, ready)) => ready,
            None => return Err(ApiError::not_found("resource")),
        };
        if let Some(version) = selection.pick(&ready) {
            return Ok(version.clone());
        }
        if !ready.is_empty() || !fetching {
            let message = if ready.is_empty() {
                "no version is ready (the last fetch failed; see the versions listing)"
            } else {
                "no ready version matches the selection"
            };
            return Err(ApiError::new(StatusCode::NOT_FOUND, "no_matching_version", message));
        }
        let waited_out = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, changes.changed()).await.is_err(),
            None => true,
        };
        if waited_out {
            let mut error = ApiError::new(
                StatusCode::ACCEPTED,
                "pending",
                "the first version is still being fetched",
            );
            error.retry_after = Some(1);
            return Err(error);
        }
    }
}

/// A ready version whose body is missing from the store: every version
/// with that body turns failed and its resource is fetched again; the
/// answer says so. [`content_with_repair`] selects again after it.
async fn lost_body(state: &Arc<AppState>, version_id: &str, sha: &str) -> ApiError {
    match state.index.lose_blob(sha, Timestamp::now()).await {
        Ok(resources) => {
            tracing::warn!(version = %version_id, blob = %sha, resources = resources.len(), "a ready version's body is missing from the blob store; its versions are marked failed and fetched again");
            for rid in resources {
                if let Err(error) = state.worker.fetch(&rid).await {
                    tracing::debug!(%error, resource = %rid, "the refetch waits for the schedule");
                }
            }
            state.worker.wake();
        }
        Err(error) => {
            tracing::warn!(%error, blob = %sha, "a body is missing from the blob store, and the index can't record it")
        }
    }
    let mut error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        BODY_MISSING,
        format!(
            "the body of version {version_id} went missing from the blob store; it is marked failed and fetched again"
        ),
    );
    error.retry_after = Some(1);
    error
}

/// The code of [`lost_body`]'s answer.
const BODY_MISSING: &str = "body_missing";

/// Selects and streams; when the selected body turns out missing, selects
/// again once, among the versions left (or waits for the refetch, as the
/// selection asks).
pub(super) async fn content_with_repair(
    state: &Arc<AppState>,
    groups: &Groups,
    rid: &str,
    selection: &Selection,
    request: &HeaderMap,
) -> AppResult<(Version, Response)> {
    let version = select(state, groups, rid, selection).await?;
    match content(state, version.clone(), request).await {
        Err(error) if error.detail.code == BODY_MISSING => {
            let version = select(state, groups, rid, selection).await?;
            let response = content(state, version.clone(), request).await?;
            Ok((version, response))
        }
        answered => Ok((version, answered?)),
    }
}

/// Streams a ready version: `ETag` is its sha256; `Range` and
/// `If-None-Match` are honoured.
pub(super) async fn content(state: &Arc<AppState>, version: Version, request: &HeaderMap) -> AppResult<Response> {
    let sha = version
        .sha256
        .clone()
        .ok_or_else(|| ApiError::conflict("not_ready", "the version has no body"))?;
    let size = version.size.unwrap_or_default();
    let etag = format!("\"{sha}\"");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).map_err(|_| ApiError::conflict("not_ready", "bad digest"))?,
    );
    if let Ok(id) = HeaderValue::from_str(&version.id) {
        headers.insert("x-edgecache-version", id);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    for (name, value) in &version.headers {
        if matches!(
            name.as_str(),
            "content-type" | "content-disposition" | "content-language" | "content-encoding"
        ) && let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    let if_none_match = request.get(header::IF_NONE_MATCH).and_then(|value| value.to_str().ok());
    if if_none_match.is_some_and(|list| {
        list.split(',')
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == "*" || tag == etag)
    }) {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    let ranged = request
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok())
        .map_or(Ranged::Whole, |value| range::parse(value, size));
    let (status, range) = match ranged {
        Ranged::Whole => (StatusCode::OK, None),
        Ranged::Part(range) => {
            let content_range = format!("bytes {}-{}/{size}", range.start, range.end - 1);
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&content_range).unwrap_or(HeaderValue::from_static("")),
            );
            (StatusCode::PARTIAL_CONTENT, Some(range))
        }
        Ranged::Unsatisfiable => {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).unwrap_or(HeaderValue::from_static("")),
            );
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, headers).into_response());
        }
    };
    let length = range.as_ref().map_or(size, |range| range.end - range.start);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    let guard = state.library.read(&version.id);
    let body = if length == 0 {
        Body::empty()
    } else {
        let stream = match state.library.blobs.read(&sha, size, range).await {
            Ok(stream) => stream,
            Err(ReadError::Missing) => return Err(lost_body(state, &version.id, &sha).await),
            Err(ReadError::Unavailable(reason)) => {
                // Logged once per outage by the store's breaker.
                tracing::debug!(%reason, blob = %sha, "a body can't be read");
                let mut error = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "blobs_unavailable",
                    "the server can't read bodies from its blob store now; try another replica or again shortly",
                );
                error.retry_after = Some(5);
                return Err(error);
            }
        };
        metrics::counter!("edgecache_server_content_bytes_total").increment(length);
        // The guard lives as long as the body streams.
        Body::from_stream(stream.map(move |chunk| {
            let _reading = &guard;
            chunk
        }))
    };
    metrics::counter!("edgecache_server_content_requests_total").increment(1);
    Ok((status, headers, body).into_response())
}
