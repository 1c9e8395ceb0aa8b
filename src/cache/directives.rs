//! What a message's headers say about caching (RFC 9111): `Cache-Control`
//! directives, delta-seconds, `Age`, dates, validators and `Vary`, read
//! leniently and capped, since they come from others.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};

/// The largest delta-seconds value a cache must handle (RFC 9111 §1.2.2);
/// larger ones count as this.
pub(crate) const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// The value of a `Cache-Control` directive of the form `name=N`.
pub(crate) fn directive_seconds(headers: &HeaderMap, directive: &str) -> Option<u64> {
    cache_control(headers)
        .find(|(name, _)| name.eq_ignore_ascii_case(directive))
        .and_then(|(_, value)| delta_seconds(value?))
}

/// The request's own `Cache-Control` (RFC 9111 §5.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    /// `max-age=N`: no older than this.
    pub(crate) max_age: Option<Duration>,
    /// `min-fresh=N`: fresh for at least this much longer.
    pub(crate) min_fresh: Option<Duration>,
    /// `max-stale[=N]`: stale responses are acceptable, up to N if given.
    pub(crate) max_stale: Option<Option<Duration>>,
    /// `only-if-cached`: never contact the origin.
    pub(crate) only_if_cached: bool,
}

impl RequestDirectives {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut directives = Self::default();
        for (name, value) in cache_control(headers) {
            let seconds = || value.and_then(delta_seconds).map(Duration::from_secs);
            if name.eq_ignore_ascii_case("max-age") {
                directives.max_age = seconds().or(directives.max_age);
            } else if name.eq_ignore_ascii_case("min-fresh") {
                directives.min_fresh = seconds().or(directives.min_fresh);
            } else if name.eq_ignore_ascii_case("max-stale") {
                directives.max_stale = Some(value.and_then(delta_seconds).map(Duration::from_secs));
            } else if name.eq_ignore_ascii_case("only-if-cached") {
                directives.only_if_cached = true;
            }
        }
        directives
    }

    /// Whether the request says anything about what it accepts.
    pub(crate) fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A delta-seconds value (RFC 9111 §1.2.2): digits, optionally quoted;
/// values past 2³¹ count as 2³¹.
pub(crate) fn delta_seconds(value: &str) -> Option<u64> {
    let digits = value.trim().trim_matches('"');
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some(
        digits
            .parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |seconds| seconds.min(MAX_DELTA_SECONDS)),
    )
}

/// Names listed in `Vary`, lower-cased, across every field line.
pub(crate) fn vary_names(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(http::header::VARY)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .map(|name| String::from_utf8_lossy(name.trim_ascii()).to_ascii_lowercase())
        .filter(|name| !name.is_empty())
}

/// The `Age` value (RFC 9111 §5.1): the first member of a list, 2³¹ at
/// most; none when it doesn't parse.
pub(crate) fn age_value(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(http::header::AGE)?.to_str().ok()?;
    delta_seconds(value.split(',').next()?)
}

/// An HTTP date, in any of the three formats RFC 9110 §5.6.7 accepts.
pub(crate) fn http_date(headers: &HeaderMap, name: http::header::HeaderName) -> Option<SystemTime> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    // Several differing values are as good as none.
    if values.any(|other| other != first) {
        return None;
    }
    httpdate::parse_http_date(first.to_str().ok()?.trim()).ok()
}

/// How old a response already is when it arrives (RFC 9111 §4.2.3): the
/// larger of its apparent age (from `Date`) and its `Age` plus the time the
/// request took.
pub(crate) fn initial_age(headers: &HeaderMap, requested_at: SystemTime, now: SystemTime) -> Duration {
    let apparent = http_date(headers, http::header::DATE)
        .and_then(|date| now.duration_since(date).ok())
        .unwrap_or_default();
    let delay = now.duration_since(requested_at).unwrap_or_default();
    let corrected = age_value(headers).map_or(Duration::ZERO, |age| Duration::from_secs(age).saturating_add(delay));
    apparent.max(corrected).min(Duration::from_secs(MAX_DELTA_SECONDS))
}

/// A copy of the response headers that `http-cache-semantics` reads as RFC
/// 9111 means them: directive names lower-cased, delta-seconds capped at
/// 2³¹, `Age` set to the corrected initial age, an `Expires` that doesn't
/// parse as a date in the past, invalid `Date`/`Last-Modified` dropped, and
/// `proxy-revalidate` left out (it forbids serving stale, handled by
/// [`Rules::forbids_stale`], not freshness).
pub(crate) fn normalized_for_policy(headers: &HeaderMap, initial_age: Duration) -> HeaderMap {
    use http::header;
    let mut normalized = HeaderMap::new();
    let directives: Vec<String> = cache_control(headers)
        .filter(|(name, _)| !name.is_empty() && !name.eq_ignore_ascii_case("proxy-revalidate"))
        .map(|(name, value)| {
            let name = name.to_ascii_lowercase();
            match value {
                None => name,
                Some(value) => match delta_seconds(value) {
                    Some(seconds) => format!("{name}={seconds}"),
                    None => format!("{name}={value}"),
                },
            }
        })
        .collect();
    if let Ok(value) = HeaderValue::from_str(&directives.join(", ")) {
        normalized.insert(header::CACHE_CONTROL, value);
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        for pragma in headers.get_all(header::PRAGMA) {
            normalized.append(header::PRAGMA, pragma.clone());
        }
    }
    normalized.insert(header::AGE, HeaderValue::from(initial_age.as_secs()));
    let date = |name: header::HeaderName| {
        http_date(headers, name).map(|time| HeaderValue::from_str(&httpdate::fmt_http_date(time)))
    };
    if headers.contains_key(header::EXPIRES) {
        let expires = date(header::EXPIRES)
            .and_then(Result::ok)
            .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
        normalized.insert(header::EXPIRES, expires);
    }
    for name in [header::DATE, header::LAST_MODIFIED] {
        if let Some(Ok(value)) = date(name.clone()) {
            normalized.insert(name, value);
        }
    }
    for name in [header::VARY, header::SET_COOKIE] {
        for value in headers.get_all(&name) {
            normalized.append(name.clone(), value.clone());
        }
    }
    normalized
}

/// Whether a `Cache-Control` header carries `directive` (names are
/// case-insensitive, RFC 9111 §5.2).
pub(crate) fn has_directive(headers: &HeaderMap, directive: &str) -> bool {
    cache_control(headers).any(|(name, _)| name.eq_ignore_ascii_case(directive))
}

/// The directives of every `Cache-Control` header, as `(name, value)`.
pub(crate) fn cache_control(headers: &HeaderMap) -> impl Iterator<Item = (&str, Option<&str>)> {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|part| match part.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim())),
            None => (part.trim(), None),
        })
}

/// Whether the response says itself how long it stays fresh.
pub(crate) fn has_explicit_freshness(headers: &HeaderMap, shared: bool) -> bool {
    headers.contains_key(http::header::EXPIRES)
        || has_directive(headers, "max-age")
        || (shared && has_directive(headers, "s-maxage"))
        || has_no_cache(headers)
}

/// `Cache-Control: no-cache`, or `Pragma: no-cache` where there is no
/// `Cache-Control` (RFC 9111 §5.4): nothing stored may be used unvalidated.
/// Said of a request or of a response.
pub(crate) fn has_no_cache(headers: &HeaderMap) -> bool {
    if headers.contains_key(http::header::CACHE_CONTROL) {
        return has_directive(headers, "no-cache");
    }
    headers.get_all(http::header::PRAGMA).iter().any(|pragma| {
        pragma
            .as_bytes()
            .windows(8)
            .any(|w| w.eq_ignore_ascii_case(b"no-cache"))
    })
}

pub(crate) fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::ETAG) || headers.contains_key(http::header::LAST_MODIFIED)
}
