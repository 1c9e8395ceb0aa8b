//! Reading request bodies and query strings, with errors that name the
//! field at fault.

use super::*;

/// A JSON request body read as `T`, one of the model's request structs.
/// An empty body reads as `{}`; a body that isn't a JSON object is a 400
/// `invalid_json`; a field that doesn't fit `T` is a 422 naming it.
pub(super) struct JsonBody<T>(pub(super) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        read_body(&body).map(JsonBody).map_err(IntoResponse::into_response)
    }
}

pub(super) fn read_body<T: DeserializeOwned>(body: &[u8]) -> AppResult<T> {
    let object = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(object @ Value::Object(_)) => object,
            Ok(_) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    "the body must be a JSON object",
                ));
            }
            Err(error) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("the body is not valid JSON: {error}"),
                ));
            }
        }
    };
    serde_path_to_error::deserialize(object).map_err(|error| {
        let field = match error.path().iter().next() {
            Some(serde_path_to_error::Segment::Map { key }) => key.clone(),
            // Every request body is an object, so a field is always named;
            // this is for a shape the model may add later.
            _ => "body".to_owned(),
        };
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        let message = if inner.starts_with("unknown field") && path == field {
            inner
        } else {
            format!("`{path}` is invalid: {inner}")
        };
        ApiError::invalid(&field, message)
    })
}

/// A free-form text field of at most 4096 bytes.
pub(super) fn check_note(name: &str, text: Option<String>) -> AppResult<Option<String>> {
    if text.as_ref().is_some_and(|text| text.len() > 4096) {
        return Err(ApiError::invalid(name, format!("`{name}` is longer than 4096 bytes")));
    }
    Ok(text)
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

/// `change` laid over `current`; at least one unpinned version is kept.
pub(super) fn limits_over(current: Limits, change: Option<LimitsChange>) -> AppResult<Limits> {
    let limits = change.map_or(current, |change| change.over(current));
    if limits.max_unpinned == 0 {
        return Err(ApiError::invalid("limits", "`max_unpinned` must be at least 1"));
    }
    Ok(limits)
}

pub(crate) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
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

    #[test]
    fn bodies_read_into_the_model_or_name_the_field_at_fault() {
        let pin: Pin = read_body(b"  ").unwrap();
        assert_eq!(pin.duration_seconds, None, "an empty body is {{}}");
        let change: Change = read_body(br#"{"limits":{"max_pinned":1}}"#).unwrap();
        assert_eq!(
            change.limits.map(|limits| limits.over(Limits::default()).max_pinned),
            Some(1)
        );
        for body in [&b"{not json"[..], b"[1]", b"\"null\""] {
            let error = read_body::<Registration>(body).unwrap_err();
            assert_eq!(
                (error.status, error.detail.code.as_str()),
                (StatusCode::BAD_REQUEST, "invalid_json")
            );
        }
        for (body, field) in [
            (&br#"{"duration_seconds":"soon"}"#[..], "duration_seconds"),
            (br#"{"duration_seconds":-1}"#, "duration_seconds"),
            (br#"{"colour":"red"}"#, "colour"),
        ] {
            let error = read_body::<Pin>(body).unwrap_err();
            assert_eq!(error.detail.field.as_deref(), Some(field), "{}", error.detail.message);
        }
        let error = read_body::<Change>(br#"{"limits":{"max_unpinned":-1}}"#).unwrap_err();
        assert_eq!(error.detail.field.as_deref(), Some("limits"));
        assert!(
            error.detail.message.starts_with("`limits.max_unpinned` is invalid"),
            "{}",
            error.detail.message
        );
    }

    proptest::proptest! {
        #[test]
        fn any_body_reads_as_a_registration_or_an_error_naming_what_is_wrong(body in proptest::collection::vec(proptest::num::u8::ANY, 0..120), json in r#"\{("[a-z_]{1,10}":("[ -~]{0,8}"|-?[0-9]{1,4}|null|\[\]|\{\}),?){0,4}\}"#) {
            for bytes in [body.as_slice(), json.as_bytes()] {
                if let Err(error) = read_body::<Registration>(bytes) {
                    match error.status {
                        StatusCode::BAD_REQUEST => proptest::prop_assert_eq!(error.detail.code.as_str(), "invalid_json"),
                        StatusCode::UNPROCESSABLE_ENTITY => proptest::prop_assert!(error.detail.field.is_some()),
                        other => proptest::prop_assert!(false, "unexpected {other}"),
                    }
                }
            }
        }

        #[test]
        fn any_query_string_selects_or_names_a_field(query in "[ -~]{0,80}") {
            if let Err(error) = selection(Some(&query)) {
                proptest::prop_assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
                proptest::prop_assert!(error.detail.field.is_some());
            }
        }
    }
}
