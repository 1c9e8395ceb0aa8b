//! `PUT /v1/resources`: registering a resource, or finding the one
//! registered with the same identity.

use super::*;

pub(super) async fn register(
    State(state): Shared,
    Extension(groups): Extension<Groups>,
    body: Bytes,
) -> AppResult<Response> {
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
pub(super) const WARNING: header::HeaderName = header::HeaderName::from_static(crate::versions::WARNING_HEADER);

/// A free-form text field of at most 4096 bytes.
pub(super) fn note(object: &mut Map<String, Value>, name: &str) -> AppResult<Option<String>> {
    let text = field::<String>(object, name)?;
    if text.as_ref().is_some_and(|text| text.len() > 4096) {
        return Err(ApiError::invalid(name, format!("`{name}` is longer than 4096 bytes")));
    }
    Ok(text)
}

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
    Ok(state.keys.key_and_url(&head, &state.key_secret).0.to_string())
}
