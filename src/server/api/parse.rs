//! Reading request bodies and query strings, with errors that name the
//! field at fault.

use super::*;

pub(super) fn json_object(body: &[u8]) -> AppResult<Map<String, Value>> {
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
pub(super) fn field<T: DeserializeOwned>(object: &mut Map<String, Value>, name: &str) -> AppResult<Option<T>> {
    match object.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value)
            .map(Some)
            .map_err(|error| ApiError::invalid(name, format!("`{name}` is invalid: {error}"))),
    }
}

pub(super) fn no_other_fields(object: &Map<String, Value>) -> AppResult<()> {
    match object.keys().next() {
        Some(name) => Err(ApiError::invalid(name, format!("unknown field `{name}`"))),
        None => Ok(()),
    }
}

pub(super) fn check_strategy(strategy: &Strategy) -> AppResult<()> {
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

pub(super) fn limits_over(current: Limits, object: &mut Map<String, Value>) -> AppResult<Limits> {
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

pub(super) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect()
}

pub(super) fn query_u64(name: &str, value: &str) -> AppResult<u64> {
    value
        .parse()
        .map_err(|_| ApiError::invalid(name, format!("`{name}` must be a whole number, not `{value}`")))
}

pub(super) fn query_bool(name: &str, value: &str) -> AppResult<bool> {
    strict_bool(value).ok_or_else(|| ApiError::invalid(name, format!("`{name}` must be true or false, not `{value}`")))
}

pub(super) fn query_tag(name: &str, value: &str) -> AppResult<String> {
    checked_name(name, value, "a tag")
}

/// A tag or group name (1 to 64 of `A-Za-z0-9._-`); else a 422 naming `field`.
pub(super) fn checked_name(field: &str, value: &str, what: &str) -> AppResult<String> {
    if is_valid_tag(value) {
        Ok(value.to_owned())
    } else {
        Err(ApiError::invalid(
            field,
            format!("`{value}` is not {what}: 1 to 64 of A-Z a-z 0-9 . _ -"),
        ))
    }
}

pub(super) fn paging(name: &str, value: &str, skip: &mut u64, limit: &mut u64) -> AppResult<bool> {
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

pub(super) fn selection(raw: Option<&str>) -> AppResult<Selection> {
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
