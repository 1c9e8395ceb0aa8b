//! `PUT /v1/resources`: registering a resource, or finding the one
//! registered with the same identity.

use super::*;

pub(super) async fn register(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    JsonBody(registration): JsonBody<Registration>,
) -> AppResult<Response> {
    let asked_strategy = registration.strategy.is_some();
    let asked_limits = registration.limits.is_some();
    let asked_purge = registration.purge_on_change.is_some();
    let (resource, headers, url) = checked(registration)?;
    check_purge_on_change(&state, resource.purge_on_change)?;
    if !groups.allows(&resource.group) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token can't use group `{}`", resource.group),
        ));
    }
    if !state.allow_private {
        guard::check_literal(&url).map_err(|refused| ApiError::invalid("url", refused.to_string()))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        if guard::resolves_only_privately(&host).await {
            return Err(ApiError::invalid("url", guard::refusal(&host)));
        }
    }
    let key = resource_key(&state, &resource, &headers)?;
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
        if asked_strategy && asked.strategy != stored.strategy {
            differences.push(difference("strategy", &stored.strategy, &asked.strategy));
        }
        if asked_limits && asked.limits != stored.limits {
            differences.push(difference("limits", &stored.limits, &asked.limits));
        }
        if asked_purge && asked.purge_on_change != stored.purge_on_change {
            differences.push(difference(
                "purge_on_change",
                &stored.purge_on_change,
                &asked.purge_on_change,
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

/// The resource a registration asks for, with its headers as a request
/// carries them and its URL (without the query) parsed; a value that can't
/// be used is a 422 naming its field.
fn checked(registration: Registration) -> AppResult<(Resource, http::HeaderMap, url::Url)> {
    let method = registration.method.unwrap_or_else(|| "GET".into()).to_ascii_uppercase();
    if !matches!(method.as_str(), "GET" | "POST" | "PUT") {
        return Err(ApiError::invalid(
            "method",
            format!("`{method}` can't be fetched: use GET, POST or PUT"),
        ));
    }
    let url_text = registration.url;
    if url_text.is_empty() {
        return Err(ApiError::invalid("url", "`url` is required"));
    }
    let mut url = edgecache_base::check::check_url(&url_text)
        .map_err(|reason| ApiError::invalid("url", format!("`{url_text}` {reason}")))?;
    // The URL's own query joins `query`, sorted: one identity however the
    // parameters were written.
    let mut query: Vec<(String, String)> = url
        .query_pairs()
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .chain(registration.query)
        .collect();
    url.set_query(None);
    query.sort();
    let mut header_map = http::HeaderMap::new();
    let mut headers = BTreeMap::new();
    for (name, value) in registration.headers {
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
    let group = checked_name(
        "group",
        registration.group.as_deref().unwrap_or("default"),
        "a group name",
    )?;
    let strategy = registration.strategy.unwrap_or_default();
    check_strategy(&strategy)?;
    let resource = Resource {
        id: uuid::Uuid::now_v7().to_string(),
        method,
        url: url.to_string(),
        query,
        headers,
        body: registration.body,
        group,
        strategy,
        limits: limits_over(Limits::default(), registration.limits)?,
        created_at: Timestamp::now(),
        last_checked_at: None,
        next_check_at: None,
        last_attempt_at: None,
        last_error: None,
        failures: 0,
        description: check_note("description", registration.description)?,
        link: check_note("link", registration.link)?,
        purge_on_change: registration.purge_on_change.unwrap_or(false),
    };
    Ok((resource, header_map, url))
}

/// `purge_on_change` needs somewhere to purge.
pub(super) fn check_purge_on_change(state: &AppState, purge_on_change: bool) -> AppResult<()> {
    if purge_on_change && !state.purges.has_targets() {
        return Err(ApiError::invalid(
            "purge_on_change",
            crate::purges::Refused::NoTargets.to_string(),
        ));
    }
    Ok(())
}

/// `name stored (asked asked)`, for the warning of a registration that found
/// the resource registered differently.
fn difference<T: serde::Serialize>(name: &str, stored: &T, asked: &T) -> String {
    format!(
        "{name} {} (asked {})",
        serde_json::to_string(stored).unwrap_or_default(),
        serde_json::to_string(asked).unwrap_or_default()
    )
}

/// `X-Edgecache-Warning`: the request was carried out, but not as asked.
pub(super) const WARNING: header::HeaderName = header::HeaderName::from_static(edgecache_versions::WARNING_HEADER);

/// The cache engine's key of the resource's request.
pub(super) fn resource_key(state: &AppState, resource: &Resource, headers: &http::HeaderMap) -> AppResult<String> {
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
    Ok(state.keys.key(&head, &state.key_secret).to_string())
}
