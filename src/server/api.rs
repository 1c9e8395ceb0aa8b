//! The HTTP API: routes, auth, selection and content.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use jiff::{SignedDuration, Timestamp};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::auth::{Groups, Tokens};
use super::blobs::Blobs;
use super::guard;
use super::index::{DeleteOutcome, Index, IndexError, PinOutcome, ResourceFilter, VersionFilter};
use super::range::{self, Ranged};
use super::schedule::Schedule;
use super::worker::{Outcome, Worker, request_url};
use crate::cache::key::{KeyRules, KeySecret, RequestHead};
use crate::versions::{
    ErrorBody, ErrorDetail, Limits, Page, Resource, Selection, Strategy, VERSION_METADATA, Version, VersionStatus,
    encode_body, is_valid_tag, strict_bool,
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
    pub(crate) blobs: Arc<Blobs>,
    pub(crate) worker: Arc<Worker>,
    pub(crate) tokens: Tokens,
    pub(crate) keys: KeyRules,
    pub(crate) key_secret: KeySecret,
    pub(crate) allow_private: bool,
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

type AppResult<T> = Result<T, ApiError>;
type Shared = State<Arc<AppState>>;

/// An error answer: `{"error":{"code","message","field"?}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    detail: ErrorDetail,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
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

    fn not_found(what: &str) -> Self {
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
            tracing::error!(%error, "the index can't be reached");
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

/// The routes, behind authentication (all but `/healthz`).
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
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
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(|| async { ApiError::not_found("route") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(1 << 20));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(api)
        .layer(axum::middleware::from_fn(count_request))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Counts answers by route template, method and status: a bounded set of
/// labels whatever the callers send.
async fn count_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = match *request.method() {
        http::Method::GET => "GET",
        http::Method::PUT => "PUT",
        http::Method::POST => "POST",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        _ => "other",
    };
    let response = next.run(request).await;
    metrics::counter!(
        "edgecache_server_requests_total",
        "route" => route,
        "method" => method,
        "status" => response.status().as_str().to_owned(),
    )
    .increment(1);
    response
}

async fn authenticate(State(state): Shared, mut request: Request, next: Next) -> Response {
    let groups = if state.tokens.is_empty() {
        Groups::All
    } else {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                // The scheme is case-insensitive (RFC 9110 §11.1).
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .map(str::trim);
        match presented.and_then(|token| state.tokens.check(token)) {
            Some(groups) => groups,
            None => {
                let message = if presented.is_some() {
                    "the bearer token is not valid"
                } else {
                    "this server needs `Authorization: Bearer <token>`"
                };
                return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
            }
        }
    };
    request.extensions_mut().insert(groups);
    next.run(request).await
}

// ---------------------------------------------------------------- parsing

fn json_object(body: &[u8]) -> AppResult<Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body must be a JSON object",
        )),
        Err(error) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {error}"),
        )),
    }
}

/// Takes `name` out of `object` as a `T`; a value that doesn't fit is a 422
/// naming the field.
fn field<T: DeserializeOwned>(object: &mut Map<String, Value>, name: &str) -> AppResult<Option<T>> {
    match object.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value)
            .map(Some)
            .map_err(|error| ApiError::invalid(name, format!("`{name}` is invalid: {error}"))),
    }
}

fn no_other_fields(object: &Map<String, Value>) -> AppResult<()> {
    match object.keys().next() {
        Some(name) => Err(ApiError::invalid(name, format!("unknown field `{name}`"))),
        None => Ok(()),
    }
}

fn check_strategy(strategy: &Strategy) -> AppResult<()> {
    let positive = |value: u64, what: &str| {
        if value == 0 {
            Err(ApiError::invalid("strategy", format!("`{what}` must be at least 1")))
        } else {
            Ok(())
        }
    };
    match strategy {
        Strategy::Never | Strategy::OnRequest { .. } => Ok(()),
        Strategy::Age { seconds } => positive(*seconds, "seconds"),
        Strategy::RemoteChanged {
            check_every_seconds, ..
        } => positive(*check_every_seconds, "check_every_seconds"),
        Strategy::Cron { expr, timezone, .. } => Schedule::parse(expr, timezone.as_deref())
            .map(|_| ())
            .map_err(|message| ApiError::invalid("strategy", message)),
    }
}

fn limits_over(current: Limits, object: &mut Map<String, Value>) -> AppResult<Limits> {
    let Some(patch) = field::<Map<String, Value>>(object, "limits")? else {
        return Ok(current);
    };
    let mut limits = serde_json::to_value(current).unwrap_or_default();
    if let Some(target) = limits.as_object_mut() {
        target.extend(patch);
    }
    let limits: Limits = serde_json::from_value(limits)
        .map_err(|error| ApiError::invalid("limits", format!("`limits` is invalid: {error}")))?;
    if limits.max_unpinned == 0 {
        return Err(ApiError::invalid("limits", "`max_unpinned` must be at least 1"));
    }
    Ok(limits)
}

fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect()
}

fn query_u64(name: &str, value: &str) -> AppResult<u64> {
    value
        .parse()
        .map_err(|_| ApiError::invalid(name, format!("`{name}` must be a whole number, not `{value}`")))
}

fn query_bool(name: &str, value: &str) -> AppResult<bool> {
    strict_bool(value).ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be true or false, not `{value}`")))
}

fn query_tag(name: &str, value: &str) -> AppResult<String> {
    checked_name(name, value, "a tag")
}

/// A tag or group name (1 to 64 of `A-Za-z0-9._-`); else a 422 naming `field`.
fn checked_name(field: &str, value: &str, what: &str) -> AppResult<String> {
    if is_valid_tag(value) {
        Ok(value.to_owned())
    } else {
        Err(ApiError::invalid(
            field,
            format!("`{value}` is not {what}: 1 to 64 of A-Z a-z 0-9 . _ -"),
        ))
    }
}

fn paging(name: &str, value: &str, skip: &mut u64, limit: &mut u64) -> AppResult<bool> {
    match name {
        "skip" => *skip = query_u64(name, value)?,
        "limit" => {
            *limit = query_u64(name, value)?.min(MAX_PAGE);
            if *limit == 0 {
                return Err(ApiError::invalid(
                    name,
                    format!("`limit` must be at least 1 (at most {MAX_PAGE} are returned)"),
                ));
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn selection(raw: Option<&str>) -> AppResult<Selection> {
    let mut selection = Selection::new();
    for (name, value) in query_pairs(raw) {
        match name.as_str() {
            "force_version" => selection.force_version = Some(value),
            "prefer_version" => selection.prefer_version = Some(value),
            "force_tag" => selection.force_tag = Some(query_tag(&name, &value)?),
            "prefer_tag" => selection.prefer_tag = Some(query_tag(&name, &value)?),
            "force_pinned" => selection.force_pinned = query_bool(&name, &value)?,
            "prefer_pinned" => selection.prefer_pinned = query_bool(&name, &value)?,
            "fresh" => selection.fresh = query_bool(&name, &value)?,
            "wait" => selection.wait = Some(query_u64(&name, &value)?),
            "at" => {
                selection.at = Some(value.parse::<Timestamp>().map_err(|error| {
                    ApiError::invalid(
                        "at",
                        format!("`at` must be an RFC 3339 time such as 2026-01-31T12:00:00Z: {error}"),
                    )
                })?)
            }
            _ => return Err(ApiError::invalid(&name, format!("unknown parameter `{name}`"))),
        }
    }
    Ok(selection)
}

// -------------------------------------------------------------- resources

impl AppState {
    /// The resource, if the caller may see it.
    async fn visible(&self, groups: &Groups, id: &str) -> AppResult<Resource> {
        match self.index.resource(id).await? {
            Some(resource) if groups.allows(&resource.group) => Ok(resource),
            _ => Err(ApiError::not_found("resource")),
        }
    }

    /// What the API shows of a resource: credential values redacted.
    fn view(&self, mut resource: Resource) -> Resource {
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

async fn register(State(state): Shared, Extension(groups): Extension<Groups>, body: Bytes) -> AppResult<Response> {
    let mut object = json_object(&body)?;
    let method = field::<String>(&mut object, "method")?
        .unwrap_or_else(|| "GET".into())
        .to_ascii_uppercase();
    if !matches!(method.as_str(), "GET" | "POST" | "PUT") {
        return Err(ApiError::invalid(
            "method",
            format!("`{method}` can't be fetched: use GET, POST or PUT"),
        ));
    }
    let url_text: String = field(&mut object, "url")?.ok_or_else(|| ApiError::invalid("url", "`url` is required"))?;
    let mut url = crate::purge::check_url(&url_text)
        .map_err(|reason| ApiError::invalid("url", format!("`{url_text}` {reason}")))?;
    let mut query: Vec<(String, String)> = url
        .query_pairs()
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    url.set_query(None);
    match object.remove("query") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let value = match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                };
                query.push((name, value));
            }
        }
        Some(other) => {
            let pairs: Vec<(String, String)> = serde_json::from_value(other).map_err(|_| {
                ApiError::invalid("query", "`query` must be an object or a list of [name, value] pairs")
            })?;
            query.extend(pairs);
        }
    }
    query.sort();
    let mut headers = BTreeMap::new();
    let mut header_map = http::HeaderMap::new();
    for (name, value) in field::<BTreeMap<String, String>>(&mut object, "headers")?.unwrap_or_default() {
        let (Ok(header_name), Ok(header_value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            return Err(ApiError::invalid(
                "headers",
                format!("`{name}` is not a valid header name and value"),
            ));
        };
        header_map.append(header_name.clone(), header_value);
        headers.insert(header_name.as_str().to_owned(), value);
    }
    let body_value = object.remove("body").filter(|value| !value.is_null());
    let group = field::<String>(&mut object, "group")?.unwrap_or_else(|| "default".into());
    let group = checked_name("group", &group, "a group name")?;
    let asked_strategy = field::<Strategy>(&mut object, "strategy")?;
    let strategy = asked_strategy.clone().unwrap_or_default();
    check_strategy(&strategy)?;
    let asked_limits = object.contains_key("limits");
    let limits = limits_over(Limits::default(), &mut object)?;
    let description = note(&mut object, "description")?;
    let link = note(&mut object, "link")?;
    no_other_fields(&object)?;
    if !groups.allows(&group) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token can't use group `{group}`"),
        ));
    }
    if !state.allow_private {
        guard::check_literal(&url).map_err(|refused| ApiError::invalid("url", refused))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        if guard::resolves_only_privately(&host).await {
            return Err(ApiError::invalid("url", guard::refusal(&host)));
        }
    }
    let now = Timestamp::now();
    let resource = Resource {
        id: uuid::Uuid::now_v7().to_string(),
        method,
        url: url.to_string(),
        query,
        headers,
        body: body_value,
        group,
        strategy,
        limits,
        created_at: now,
        last_checked_at: None,
        next_check_at: None,
        last_attempt_at: None,
        last_error: None,
        failures: 0,
        description,
        link,
    };
    let key = resource_key(&state, &resource, &header_map)?;
    let asked = resource.clone();
    let (stored, created) = state.index.register(key, resource).await?;
    // A resource never fetched yet may be one whose registration, racing
    // this one, hasn't started its fetch: starting it here joins or starts
    // that one fetch, so a waiting caller always has one to wait for.
    if created || stored.last_checked_at.is_none() {
        state.worker.fetch(&stored.id).await?;
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let mut differences = Vec::new();
    if !created {
        if asked_strategy.is_some() && asked.strategy != stored.strategy {
            differences.push(format!(
                "strategy {} (asked {})",
                serde_json::to_string(&stored.strategy).unwrap_or_default(),
                serde_json::to_string(&asked.strategy).unwrap_or_default()
            ));
        }
        if asked_limits && asked.limits != stored.limits {
            differences.push(format!(
                "limits {} (asked {})",
                serde_json::to_string(&stored.limits).unwrap_or_default(),
                serde_json::to_string(&asked.limits).unwrap_or_default()
            ));
        }
    }
    let id = stored.id.clone();
    let mut response = (status, Json(state.view(stored))).into_response();
    if !differences.is_empty() {
        // The registration is idempotent, so the stored resource is kept;
        // the caller hears that it differs, and how to change it.
        let warning = format!(
            "registered already, and kept as it is: {}; change it with PATCH /v1/resources/{id}",
            differences.join("; ")
        );
        if let Ok(value) = HeaderValue::from_str(&warning) {
            response.headers_mut().insert(WARNING, value);
        }
    }
    Ok(response)
}

/// `X-Edgecache-Warning`: the request was carried out, but not as asked.
const WARNING: header::HeaderName = header::HeaderName::from_static(crate::versions::WARNING_HEADER);

/// A free-form text field of at most 4096 bytes.
fn note(object: &mut Map<String, Value>, name: &str) -> AppResult<Option<String>> {
    let text = field::<String>(object, name)?;
    if text.as_ref().is_some_and(|text| text.len() > 4096) {
        return Err(ApiError::invalid(name, format!("`{name}` is longer than 4096 bytes")));
    }
    Ok(text)
}

/// The cache engine's key of the resource's request.
fn resource_key(state: &AppState, resource: &Resource, headers: &http::HeaderMap) -> AppResult<String> {
    let url = request_url(resource).map_err(|message| ApiError::invalid("url", message))?;
    let method = http::Method::from_bytes(resource.method.as_bytes())
        .map_err(|_| ApiError::invalid("method", "invalid method"))?;
    let mut headers = headers.clone();
    let body = encode_body(resource.body.as_ref(), &mut headers).unwrap_or_default();
    let head = RequestHead {
        method: &method,
        url: &url,
        headers: &headers,
        body: &body,
    };
    Ok(state.keys.key_and_url(&head, &state.key_secret).0.to_string())
}

async fn list_resources(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    RawQuery(raw): RawQuery,
) -> AppResult<Json<Page<Resource>>> {
    let (mut skip, mut limit, mut filter) = (0, 100, ResourceFilter::default());
    for (name, value) in query_pairs(raw.as_deref()) {
        if !paging(&name, &value, &mut skip, &mut limit)? {
            match name.as_str() {
                "group" => filter.group = Some(checked_name(&name, &value, "a group name")?),
                "cache_tag" => {
                    let tag = crate::purge::check_object(crate::purge::ObjectKind::Tag, &value)
                        .map_err(|reason| ApiError::invalid(&name, format!("`cache_tag`: {reason}")))?;
                    filter.cache_tag = Some(tag);
                }
                _ => return Err(ApiError::invalid(&name, format!("unknown parameter `{name}`"))),
            }
        }
    }
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
    body: Bytes,
) -> AppResult<Json<Resource>> {
    let mut object = json_object(&body)?;
    let resource = state.visible(&groups, &rid).await?;
    let strategy = field::<Strategy>(&mut object, "strategy")?.unwrap_or(resource.strategy);
    check_strategy(&strategy)?;
    let limits = limits_over(resource.limits, &mut object)?;
    no_other_fields(&object)?;
    let updated = state
        .index
        .update(&rid, strategy, limits, Timestamp::now())
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
    let _lock = state.worker.lock_blobs().await?;
    match state.index.delete(&rid, force, Timestamp::now()).await? {
        DeleteOutcome::Deleted(orphans) => {
            state.worker.release(orphans).await;
            Ok(StatusCode::NO_CONTENT)
        }
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
    let mut filter = VersionFilter {
        limit: 100,
        ..VersionFilter::default()
    };
    for (name, value) in query_pairs(raw.as_deref()) {
        if paging(&name, &value, &mut filter.skip, &mut filter.limit)? {
            continue;
        }
        match name.as_str() {
            "status" => {
                filter.status = Some(VersionStatus::parse(&value).ok_or_else(|| {
                    ApiError::invalid(
                        "status",
                        format!("`{value}` is not a status: pending, downloading, ready or failed"),
                    )
                })?)
            }
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
    let version = select(&state, &groups, &rid, &selection).await?;
    // Only for clients that ask: most callers want the body alone.
    let metadata = headers
        .contains_key(VERSION_METADATA)
        .then(|| version.to_header())
        .flatten();
    let mut response = content(&state, version, &headers).await?;
    if let Some(metadata) = metadata {
        response.headers_mut().insert(VERSION_METADATA, metadata);
    }
    Ok(response)
}

/// Runs a selection: fetches first when asked (`fresh`, or an
/// `on_request` resource due a check), waits for a first version when
/// asked (`wait`), and picks among ready versions.
async fn select(state: &Arc<AppState>, groups: &Groups, rid: &str, selection: &Selection) -> AppResult<Version> {
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
        let outcome = state.worker.fetch_and_wait(&resource.id).await?;
        match outcome {
            None => return Err(ApiError::not_found("resource")),
            Some(Outcome::Failed(error)) if selection.fresh => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "fetch_failed",
                    format!("the fresh fetch failed: {error}"),
                ));
            }
            Some(Outcome::Ready(id) | Outcome::Unchanged(id)) if selection.fresh => {
                return state
                    .index
                    .version(&resource.id, &id, Timestamp::now())
                    .await?
                    .ok_or_else(|| {
                        ApiError::new(StatusCode::CONFLICT, "not_ready", "the fresh version was collected")
                    });
            }
            // `on_request` serves what it has when the origin fails.
            Some(_) => {}
        }
    }
    // The common case: the first read has a match, and nothing else is asked.
    if let Some(version) = ready.as_deref().and_then(|ready| selection.pick(ready)) {
        return Ok(version.clone());
    }
    let wait = selection.wait.map(|seconds| Duration::from_secs(seconds).min(MAX_WAIT));
    let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
    let mut changes = state.worker.changes();
    loop {
        changes.mark_unchanged();
        // Asked before reading: a fetch records its version before it stops
        // counting as under way, so "not fetching" and "nothing ready" read
        // in this order mean there is nothing to wait for.
        let fetching = state.worker.is_fetching(&resource.id).await?;
        let ready = match state.index.selectable(&resource.id, Timestamp::now()).await? {
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

/// Streams a ready version: `ETag` is its sha256; `Range` and
/// `If-None-Match` are honoured.
async fn content(state: &Arc<AppState>, version: Version, request: &HeaderMap) -> AppResult<Response> {
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
    let guard = state.worker.read(&version.id);
    let body = if length == 0 {
        Body::empty()
    } else {
        let stream = state.blobs.read(&sha, size, range).await.map_err(|error| {
            tracing::error!(%error, blob = %sha, "a ready version's body is missing");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the version's body can't be read; see the server log",
            )
        })?;
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

// ------------------------------------------------------------ pins, tags

async fn pin(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    Path((rid, vid)): Path<(String, String)>,
    body: Bytes,
) -> AppResult<Json<Version>> {
    let mut object = json_object(&body)?;
    let duration = field::<u64>(&mut object, "duration_seconds")?;
    no_other_fields(&object)?;
    if let Some(seconds) = duration
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
    let until = duration.map(|seconds| {
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
    let (index, blobs) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(5), state.index.ping()),
        tokio::time::timeout(Duration::from_secs(5), state.blobs.ping()),
    );
    let index = match index {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some("the index did not answer within 5 s".to_owned()),
    };
    let blobs = match blobs {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some("the blob store did not answer within 5 s".to_owned()),
    };
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
    let text = state.metrics.as_ref().map(|handle| handle.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(super::openapi::document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_parameters_read_as_documented() {
        let selection = selection(Some(
            "prefer_tag=ok&prefer_pinned=true&force_version=v1&at=2026-01-31T12:00:00Z&wait=5",
        ))
        .unwrap();
        assert_eq!(selection.prefer_tag.as_deref(), Some("ok"));
        assert!(selection.prefer_pinned && !selection.force_pinned);
        assert_eq!(selection.force_version.as_deref(), Some("v1"));
        assert_eq!(selection.wait, Some(5));
        assert!(selection.at.is_some());
        for (query, field) in [
            ("prefer_tag=a%20b", "prefer_tag"),
            ("wait=-1", "wait"),
            ("fresh=yes", "fresh"),
            ("colour=red", "colour"),
        ] {
            assert_eq!(
                super::selection(Some(query)).unwrap_err().detail.field.as_deref(),
                Some(field),
                "{query}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_query_string_selects_or_names_a_field(query in "[ -~]{0,80}") {
            if let Err(error) = selection(Some(&query)) {
                proptest::prop_assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
                proptest::prop_assert!(error.detail.field.is_some());
            }
        }
    }
}
