//! Answers from the cache: the stored response, marked with `X-Cache` and
//! `Cache-Status`, and the report that goes with it.

use super::*;

pub(super) const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

pub(super) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Ages below this many seconds are answered from [`AGE_TEXT`].
const TEXT_AGES: u64 = 10_000;

/// `0`, `1`, ... `9999`, written one after another: the `Age` of a hit is a
/// slice of this text, neither formatted nor allocated on each answer.
static AGE_TEXT: &str = {
    const LEN: usize = 10 + 90 * 2 + 900 * 3 + 9000 * 4;
    static DIGITS: [u8; LEN] = {
        let mut text = [0u8; LEN];
        let (mut at, mut age) = (0, 0u64);
        while age < TEXT_AGES {
            let width = age_width(age);
            let (mut digit, mut rest) = (width, age);
            while digit > 0 {
                digit -= 1;
                text[at + digit] = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            at += width;
            age += 1;
        }
        text
    };
    match std::str::from_utf8(&DIGITS) {
        Ok(text) => text,
        Err(_) => panic!("decimal digits are ASCII"),
    }
};

const fn age_width(age: u64) -> usize {
    match age {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        _ => 4,
    }
}

/// The `Age` header for an age in seconds.
fn age_value(seconds: u64) -> HeaderValue {
    // Where the number starts in `AGE_TEXT`: after all shorter numbers.
    let start = match seconds {
        0..=9 => seconds,
        10..=99 => 10 + (seconds - 10) * 2,
        100..=999 => 190 + (seconds - 100) * 3,
        1000..TEXT_AGES => 2890 + (seconds - 1000) * 4,
        _ => return HeaderValue::from(seconds),
    };
    let text = usize::try_from(start)
        .ok()
        .and_then(|start| AGE_TEXT.get(start..start + age_width(seconds)));
    text.map_or_else(|| HeaderValue::from(seconds), HeaderValue::from_static)
}

/// Whether a stored response satisfies the request's `If-None-Match` (weak
/// comparison), or, without one, its `If-Modified-Since`.
pub(super) fn not_modified(request: &HeaderMap, stored: &StoredResponse) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = stored.headers.get(header::ETAG).and_then(|etag| etag.to_str().ok()) else {
            return false;
        };
        let weak = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|tag| tag.trim() == "*" || weak(tag) == weak(etag));
    }
    let date = |headers: &HeaderMap, name| {
        headers
            .get(name)
            .and_then(|value: &HeaderValue| httpdate::parse_http_date(value.to_str().ok()?).ok())
    };
    let Some(since) = date(request, header::IF_MODIFIED_SINCE) else {
        return false;
    };
    // Without `Last-Modified`, the stored `Date`, else when it was received
    // (RFC 9111 §4.3.2).
    let modified = date(&stored.headers, header::LAST_MODIFIED)
        .or_else(|| date(&stored.headers, header::DATE))
        .unwrap_or(stored.created_at);
    modified <= since
}

/// How long past its expiry an entry is (zero while fresh).
pub(super) fn staleness(entry: &StoredResponse, now: SystemTime) -> Duration {
    entry
        .expires
        .and_then(|expires| now.duration_since(expires).ok())
        .unwrap_or_default()
}

/// `later - now` in whole seconds, negative when `later` has passed.
pub(super) fn signed_seconds(later: SystemTime, now: SystemTime) -> i64 {
    match later.duration_since(now) {
        Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
        Err(behind) => i64::try_from(behind.duration().as_secs()).map_or(i64::MIN, |seconds| -seconds),
    }
}

/// A stored entry's status and headers, as the expiry rules take them.
pub(super) fn response_parts(entry: &StoredResponse) -> (http::response::Parts, ()) {
    let mut response = http::Response::new(());
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    response.into_parts()
}

/// The report on an answer from a stored entry.
pub(super) fn served(entry: &StoredResponse, key: CacheKey, status: CacheStatus, now: SystemTime) -> CacheInfo {
    CacheInfo {
        status,
        from_cache: true,
        created_at: Some(entry.created_at),
        expires: entry.expires,
        is_expired: entry.is_expired(now),
        revalidated: status == CacheStatus::Revalidated,
        cache_key: Some(key),
        ttl: entry.expires.map(|expires| signed_seconds(expires, now)),
        ..miss(None, None)
    }
}

pub(super) fn miss(cache_key: Option<CacheKey>, stored: Option<&StoredResponse>) -> CacheInfo {
    CacheInfo {
        status: CacheStatus::Miss,
        from_cache: false,
        created_at: stored.map(|entry| entry.created_at),
        expires: stored.and_then(|entry| entry.expires),
        is_expired: false,
        revalidated: false,
        cache_key,
        forward: None,
        forward_status: None,
        stored: false,
        collapsed: false,
        ttl: None,
        detail: None,
    }
}

impl Engine {
    /// A response from a stored entry: the whole response, its head alone
    /// for `HEAD`, or a `304` when the request's own validators match
    /// (RFC 9110 §13.1.1, §13.1.3).
    pub(super) fn answer(
        &self,
        entry: &StoredResponse,
        info: CacheInfo,
        now: SystemTime,
        head: bool,
        validating: Option<&HeaderMap>,
    ) -> Answer {
        let not_modified = validating.is_some_and(|request| not_modified(request, entry));
        let body = if head || not_modified {
            Bytes::new()
        } else {
            entry.body.clone()
        };
        let mut response = http::Response::new(body);
        // Sized for `Age`, `x-cache` and `Cache-Status` too: a clone would be
        // exactly full, and growing it costs more than filling a new map.
        let mut headers = HeaderMap::with_capacity(entry.headers.len() + 3);
        for (name, value) in &entry.headers {
            headers.append(name, value.clone());
        }
        headers.insert(header::AGE, age_value(entry.age(now).as_secs()));
        if not_modified {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            for name in [
                header::CONTENT_LENGTH,
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                header::CONTENT_RANGE,
            ] {
                headers.remove(name);
            }
        } else {
            *response.status_mut() = entry.status;
        }
        self.mark(&mut headers, &info);
        *response.headers_mut() = headers;
        Answer { response, info }
    }

    /// `504 Gateway Timeout`: what `only-if-cached` gets when nothing stored
    /// may answer (RFC 9111 §5.2.1.7).
    pub(super) fn gateway_timeout(&self, key: CacheKey) -> Answer {
        let mut response = http::Response::new(Bytes::new());
        *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        let info = CacheInfo {
            detail: Some("only-if-cached"),
            ..miss(Some(key), None)
        };
        self.mark(response.headers_mut(), &info);
        Answer { response, info }
    }

    /// Sets the `x-cache` and `Cache-Status` headers, unless turned off.
    pub(crate) fn mark(&self, headers: &mut HeaderMap, info: &CacheInfo) {
        if self.options.x_cache_header {
            headers.insert(X_CACHE, HeaderValue::from_static(info.status.as_str()));
        }
        if self.options.cache_status_header {
            // On the stack, then one copy into the header: this runs on every hit.
            let mut buffer = [0u8; 160];
            let mut len = 0;
            info.write_cache_status(|part| {
                let end = len + part.len();
                if let Some(slot) = buffer.get_mut(len..end) {
                    slot.copy_from_slice(part.as_bytes());
                    len = end;
                }
            });
            if let Ok(value) = HeaderValue::from_bytes(&buffer[..len]) {
                headers.insert(CACHE_STATUS, value);
            }
        }
    }

    pub(super) fn annotate(&self, headers: &mut HeaderMap, extensions: &mut http::Extensions, info: CacheInfo) {
        self.mark(headers, &info);
        extensions.insert(info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_age_reads_as_its_decimal_number() {
        for seconds in (0..TEXT_AGES + 20).chain([u64::from(u32::MAX), u64::MAX]) {
            assert_eq!(age_value(seconds).to_str().ok(), Some(seconds.to_string().as_str()));
        }
    }
}
