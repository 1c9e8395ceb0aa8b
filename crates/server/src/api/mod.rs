//! The HTTP API: routes, auth and the answers; parsing, registration and
//! selection have rooms of their own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use jiff::{SignedDuration, Timestamp};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

mod parse;
pub(crate) mod purges;
mod register;
mod selection;

pub(super) use parse::query_pairs;
use parse::*;
use register::register;
use selection::{content, content_with_repair, select};

use super::auth::{Groups, Tokens};
use super::blobs::ReadError;
use super::guard;
use super::index::{DeleteOutcome, Finish, Index, IndexError, PinOutcome, ResourceFilter, VersionQuery};
use super::library::Library;
use super::range::{self, Ranged};
use super::schedule::Schedule;
use super::worker::{Worker, request_url};
use edgecache_base::key::{KeyRules, KeySecret, RequestHead};
use edgecache_versions::{
    Change, ErrorBody, ErrorDetail, Limits, LimitsChange, Page, Pin, Registration, Resource, Selection, Strategy,
    VERSION_METADATA, Version, VersionStatus, encode_body, is_valid_tag, strict_bool,
};

/// Listings return at most this many items per page.
const MAX_PAGE: u64 = 1000;
/// The longest timed pin: 100 years. Longer is a mistake; a pin without end
/// has no duration.
const MAX_PIN_SECONDS: u64 = 100 * 365 * 86_400;
/// `wait=` is capped, so a request can't hold a connection for ever.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// What credential headers and parameters read as in answers.
const REDACTED: &str = "<redacted>";

/// Everything the handlers share.
pub(crate) struct AppState {
    pub(crate) index: Arc<dyn Index>,
    pub(crate) library: Arc<Library>,
    pub(crate) worker: Arc<Worker>,
    pub(crate) tokens: Tokens,
    pub(crate) keys: KeyRules,
    pub(crate) key_secret: KeySecret,
    pub(crate) allow_private: bool,
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub(crate) purges: Arc<crate::purges::Purges>,
}

type AppResult<T> = Result<T, ApiError>;
pub(crate) type Shared = State<Arc<AppState>>;

/// An error answer: `{"error":{"code","message","field"?}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    detail: ErrorDetail,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail {
                code: code.into(),
                message: message.into(),
                field: None,
            },
            retry_after: None,
        }
    }

    fn invalid(field: &str, message: impl Into<String>) -> Self {
        let mut error = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message);
        error.detail.field = Some(field.into());
        error
    }

    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"))
    }

    fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
}

impl From<IndexError> for ApiError {
    fn from(error: IndexError) -> Self {
        if error.is_disk_full() {
            tracing::error!(%error, "the data directory's disk is full");
            return Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "the server's disk is full; nothing was changed",
            );
        }
        if error.is_unavailable() {
            // Logged once per outage by the index's breaker, not per request.
            tracing::debug!(%error, "the index can't be reached");
            let mut unavailable = Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "index_unavailable",
                "the server can't reach its index database, so it can't confirm any version; try another replica or again shortly",
            );
            unavailable.retry_after = Some(5);
            return unavailable;
        }
        tracing::error!(%error, "index failure");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server's index failed; see its log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody { error: self.detail })).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The API's routes; [`app`](super::app) puts them behind authentication.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/resources", put(register).get(list_resources))
        .route(
            "/v1/resources/{rid}",
            get(get_resource).patch(update_resource).delete(delete_resource),
        )
        .route("/v1/resources/{rid}/fetch", post(fetch_now))
        .route("/v1/resources/{rid}/content", get(select_content))
        .route("/v1/resources/{rid}/versions", get(list_versions))
        .route("/v1/resources/{rid}/versions/select", get(select_version))
        .route("/v1/resources/{rid}/versions/{vid}", get(get_version))
        .route("/v1/resources/{rid}/versions/{vid}/content", get(version_content))
        .route("/v1/resources/{rid}/versions/{vid}/pin", put(pin).delete(unpin))
        .route(
            "/v1/resources/{rid}/versions/{vid}/tags/{tag}",
            put(add_tag).delete(remove_tag),
        )
        .route("/v1/purges", get(purges::list))
        .route("/v1/purges/{id}", get(purges::get_one))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

/// `POST /v1/purges`, whose bodies may be larger than any other route's:
/// a release can purge hundreds of thousands of URLs at once.
pub(crate) fn purge_route() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/v1/purges",
            post(purges::create).layer(axum::extract::DefaultBodyLimit::max(purges::MAX_BODY)),
        )
        .layer(tower_http::limit::RequestBodyLimitLayer::new(purges::MAX_BODY))
}

/// `/healthz`, answered without a token.
pub(crate) fn health() -> Router<Arc<AppState>> {
    Router::new().route("/healthz", get(healthz))
}

// -------------------------------------------------------------- resources

impl AppState {
    /// The resource, if the caller may see it.
    pub(super) async fn visible(&self, groups: &Groups, id: &str) -> AppResult<Resource> {
        match self.index.resource(id).await? {
            Some(resource) if groups.allows(&resource.group) => Ok(resource),
            _ => Err(ApiError::not_found("resource")),
        }
    }

    /// The Prometheus text `/metrics` serves and the dashboard reads; empty
    /// when another recorder took the process.
    pub(super) fn metrics_text(&self) -> String {
        self.metrics.as_ref().map(|handle| handle.render()).unwrap_or_default()
    }

    /// What the API shows of a resource: credential values redacted.
    pub(super) fn view(&self, mut resource: Resource) -> Resource {
        for (name, value) in resource.headers.iter_mut() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_ok_and(|name| self.keys.is_credential_header(&name)) {
                *value = REDACTED.into();
            }
        }
        for (name, value) in resource.query.iter_mut() {
            if self.keys.is_credential_parameter(name) {
                *value = REDACTED.into();
            }
        }
        resource
    }
}

/// A resource listing's query: `skip`, `limit` and the filters.
pub(super) struct Listing {
    pub(super) skip: u64,
    pub(super) limit: u64,
    pub(super) filter: ResourceFilter,
}

impl Listing {
    pub(super) fn parse(pairs: impl IntoIterator<Item = (String, String)>) -> AppResult<Self> {
        let (mut skip, mut limit, mut filter) = (0, 100, ResourceFilter::default());
        for (name, value) in pairs {
            if paging(&name, &value, &mut skip, &mut limit)? {
                continue;
            }
            match name.as_str() {
                "group" => filter.group = Some(checked_name(&name, &value, "a group name")?),
                "cache_tag" => {
                    edgecache_base::check::check_tag(&value)
                        .map_err(|reason| ApiError::invalid(&name, format!("`cache_tag`: {reason}")))?;
                    filter.cache_tag = Some(value);
                }
                "search" => filter.url_contains = Some(value),
                "strategy" => {
                    if !STRATEGY_KINDS.contains(&value.as_str()) {
                        return Err(ApiError::invalid(
                            &name,
                            format!("`{value}` is not a strategy: never, age, cron, remote_changed or on_request"),
                        ));
                    }
                    filter.strategy = Some(value);
                }
                "status" => filter.newest_status = Some(version_status(&name, &value)?),
                "failing" => filter.failing = Some(query_bool(&name, &value)?),
                _ => return Err(ApiError::invalid(&name, format!("unknown parameter `{name}`"))),
            }
        }
        Ok(Self { skip, limit, filter })
    }
}

/// The kinds of [`Strategy`], as the `kind` field names them.
pub(super) const STRATEGY_KINDS: [&str; 5] = ["never", "age", "cron", "remote_changed", "on_request"];

fn version_status(name: &str, value: &str) -> AppResult<VersionStatus> {
    VersionStatus::parse(value).ok_or_else(|| {
        ApiError::invalid(
            name,
            format!("`{value}` is not a status: pending, downloading, ready or failed"),
        )
    })
}

async fn list_resources(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    RawQuery(raw): RawQuery,
) -> AppResult<Json<Page<Resource>>> {
    let Listing { skip, limit, filter } = Listing::parse(query_pairs(raw.as_deref()))?;
    let mut page = state.index.resources(groups.list(), filter, skip, limit).await?;
    page.items = page.items.into_iter().map(|resource| state.view(resource)).collect();
    Ok(Json(page))
}

async fn get_resource(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    Path(rid): Path<String>,
) -> AppResult<Json<Resource>> {
    let resource = state.visible(&groups, &rid).await?;
    Ok(Json(state.view(resource)))
}

async fn update_resource(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    Path(rid): Path<String>,
    JsonBody(change): JsonBody<Change>,
) -> AppResult<Json<Resource>> {
    let resource = state.visible(&groups, &rid).await?;
    let strategy = change.strategy.unwrap_or(resource.strategy);
    check_strategy(&strategy)?;
    let limits = limits_over(resource.limits, change.limits)?;
    let purge_on_change = change.purge_on_change.unwrap_or(resource.purge_on_change);
    register::check_purge_on_change(&state, purge_on_change)?;
    let updated = state
        .index
        .update(&rid, strategy, limits, purge_on_change, Timestamp::now())
        .await?
        .ok_or_else(|| ApiError::not_found("resource"))?;
    state.worker.wake();
    Ok(Json(state.view(updated)))
}

async fn delete_resource(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    Path(rid): Path<String>,
    RawQuery(raw): RawQuery,
) -> AppResult<StatusCode> {
    let mut force = false;
    for (name, value) in query_pairs(raw.as_deref()) {
        match name.as_str() {
            "force" => force = query_bool(&name, &value)?,
            _ => return Err(ApiError::invalid(&name, format!("unknown parameter `{name}`"))),
        }
    }
    state.visible(&groups, &rid).await?;
    match state.library.delete(&rid, force).await? {
        DeleteOutcome::Deleted(_) => Ok(StatusCode::NO_CONTENT),
        DeleteOutcome::NotFound => Err(ApiError::not_found("resource")),
        DeleteOutcome::Pinned(count) => Err(ApiError::conflict(
            "pinned",
            format!("{count} version(s) are pinned; unpin them or delete with ?force=true"),
        )),
    }
}

async fn fetch_now(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    Path(rid): Path<String>,
) -> AppResult<Response> {
    state.visible(&groups, &rid).await?;
    let (version, _) = state
        .worker
        .fetch(&rid)
        .await?
        .ok_or_else(|| ApiError::not_found("resource"))?;
    Ok((StatusCode::ACCEPTED, Json(version)).into_response())
}

// --------------------------------------------------------------- versions

async fn list_versions(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    Path(rid): Path<String>,
    RawQuery(raw): RawQuery,
) -> AppResult<Json<Page<Version>>> {
    let mut filter = VersionQuery {
        limit: 100,
        ..VersionQuery::default()
    };
    for (name, value) in query_pairs(raw.as_deref()) {
        if paging(&name, &value, &mut filter.skip, &mut filter.limit)? {
            continue;
        }
        match name.as_str() {
            "status" => filter.status = Some(version_status(&name, &value)?),
            "tag" => filter.tag = Some(query_tag(&name, &value)?),
            "pinned" => filter.pinned = Some(query_bool(&name, &value)?),
            _ => return Err(ApiError::invalid(&name, format!("unknown parameter `{name}`"))),
        }
    }
    state.visible(&groups, &rid).await?;
    Ok(Json(state.index.versions(&rid, filter, Timestamp::now()).await?))
}

async fn get_version(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    Path((rid, vid)): Path<(String, String)>,
) -> AppResult<Json<Version>> {
    state.visible(&groups, &rid).await?;
    let version = state.index.version(&rid, &vid, Timestamp::now()).await?;
    Ok(Json(version.ok_or_else(|| ApiError::not_found("version"))?))
}

async fn version_content(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    Path((rid, vid)): Path<(String, String)>,
    headers: HeaderMap,
) -> AppResult<Response> {
    state.visible(&groups, &rid).await?;
    let version = state
        .index
        .version(&rid, &vid, Timestamp::now())
        .await?
        .ok_or_else(|| ApiError::not_found("version"))?;
    if version.status != VersionStatus::Ready {
        return Err(ApiError::conflict(
            "not_ready",
            format!(
                "version {} is {}; only ready versions have content",
                version.id, version.status
            ),
        ));
    }
    content(&state, version, &headers).await
}

async fn select_version(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    Path(rid): Path<String>,
    RawQuery(raw): RawQuery,
) -> AppResult<Json<Version>> {
    let selection = selection(raw.as_deref())?;
    Ok(Json(select(&state, &groups, &rid, &selection).await?))
}

async fn select_content(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    Path(rid): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> AppResult<Response> {
    let selection = selection(raw.as_deref())?;
    let (version, mut response) = content_with_repair(&state, &groups, &rid, &selection, &headers).await?;
    // Only for clients that ask: most callers want the body alone.
    let metadata = headers
        .contains_key(VERSION_METADATA)
        .then(|| version.to_header())
        .flatten();
    if let Some(metadata) = metadata {
        response.headers_mut().insert(VERSION_METADATA, metadata);
    }
    Ok(response)
}

// ------------------------------------------------------------ pins, tags

async fn pin(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    Path((rid, vid)): Path<(String, String)>,
    JsonBody(Pin { duration_seconds }): JsonBody<Pin>,
) -> AppResult<Json<Version>> {
    if let Some(seconds) = duration_seconds
        && !(1..=MAX_PIN_SECONDS).contains(&seconds)
    {
        return Err(ApiError::invalid(
            "duration_seconds",
            format!(
                "`duration_seconds` must be from 1 to {MAX_PIN_SECONDS} (100 years), not {seconds}; leave it out for a pin without end"
            ),
        ));
    }
    state.visible(&groups, &rid).await?;
    let now = Timestamp::now();
    let until = duration_seconds.map(|seconds| {
        now.saturating_add(SignedDuration::from_secs(i64::try_from(seconds).unwrap_or(i64::MAX)))
            .unwrap_or(Timestamp::MAX)
    });
    match state.index.pin(&rid, &vid, until, now).await? {
        PinOutcome::Pinned(version) => Ok(Json(*version)),
        PinOutcome::NotFound => Err(ApiError::not_found("version")),
        PinOutcome::NotReady => Err(ApiError::conflict("not_ready", "only ready versions can be pinned")),
        PinOutcome::LimitReached(limit) => Err(ApiError::conflict(
            "pin_limit",
            format!("{limit} versions are pinned already (max_pinned); unpin one first"),
        )),
    }
}

async fn unpin(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    Path((rid, vid)): Path<(String, String)>,
) -> AppResult<Json<Version>> {
    state.visible(&groups, &rid).await?;
    let version = state.index.unpin(&rid, &vid, Timestamp::now()).await?;
    state.worker.wake();
    Ok(Json(version.ok_or_else(|| ApiError::not_found("version"))?))
}

async fn tag(
    state: &AppState,
    groups: &Groups,
    rid: &str,
    vid: &str,
    tag: &str,
    add: bool,
) -> AppResult<Json<Version>> {
    let tag = query_tag("tag", tag)?;
    state.visible(groups, rid).await?;
    let version = state.index.tag(rid, vid, &tag, add, Timestamp::now()).await?;
    Ok(Json(version.ok_or_else(|| ApiError::not_found("version"))?))
}

async fn add_tag(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    Path((rid, vid, name)): Path<(String, String, String)>,
) -> AppResult<Json<Version>> {
    tag(&state, &groups, &rid, &vid, &name, true).await
}

async fn remove_tag(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    Path((rid, vid, name)): Path<(String, String, String)>,
) -> AppResult<Json<Version>> {
    tag(&state, &groups, &rid, &vid, &name, false).await
}

// ------------------------------------------------------- metrics, openapi

/// Whether this replica reaches its index and its blobs: 200, or 503 with
/// what fails.
async fn healthz(State(state): Shared) -> Response {
    // The index's deadline bounds the ping; the blob store is checked in
    // the background (a write and a read), and its last outcome is told.
    let index = state.index.ping().await.err().map(|error| error.to_string());
    let blobs = state.library.blobs.last_check();
    let status = if index.is_none() && blobs.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let check = |failure: Option<String>| match failure {
        None => serde_json::json!({"status": "ok"}),
        Some(error) => serde_json::json!({"status": "failing", "error": error}),
    };
    let body = serde_json::json!({
        "status": if status == StatusCode::OK { "ok" } else { "failing" },
        "index": check(index),
        "blobs": check(blobs),
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(state): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics_text(),
    )
        .into_response()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(super::openapi::document())
}
