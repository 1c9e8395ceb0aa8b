//! What gets stored, and for how long.
//!
//! Expiry precedence, from strongest to weakest:
//!
//! 1. `Cache-Control: no-store` (request or response) is never stored, and a
//!    configured [`ExpireAfter::DoNotCache`] always wins;
//! 2. the response's own freshness headers (`Cache-Control: max-age`,
//!    `no-cache`, `Expires`), judged as a private cache under RFC 9111, unless
//!    header-driven expiry is turned off;
//! 3. the per-request [`ExpireAfter`] (a request extension);
//! 4. the first URL pattern that matches;
//! 5. the cache-wide default ([`ExpireAfter::Never`] unless set).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use http::{HeaderMap, Method, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy};
use url::Url;

use crate::Error;

/// How long a response stays fresh once stored.
///
/// Set it for the whole cache, per URL pattern, or per request (as a request
/// extension). Parses from text: `never`, `0` (do not cache), `immediately`,
/// or a duration such as `30s`, `5m`, `2h`, `1d`.
///
/// ```
/// use std::time::Duration;
/// use edgecache::ExpireAfter;
///
/// assert_eq!("5m".parse::<ExpireAfter>().unwrap(), ExpireAfter::After(Duration::from_secs(300)));
/// assert_eq!("never".parse::<ExpireAfter>().unwrap(), ExpireAfter::Never);
/// assert_eq!(ExpireAfter::from(Duration::from_secs(60)), ExpireAfter::After(Duration::from_secs(60)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireAfter {
    /// Fresh forever (until deleted or evicted).
    Never,
    /// Stored only when the response has a validator (`ETag` or
    /// `Last-Modified`), and revalidated with the origin on every use.
    Immediately,
    /// Not stored at all.
    DoNotCache,
    /// Fresh for this long after it is stored.
    After(Duration),
    /// Fresh until this moment.
    At(SystemTime),
}

impl From<Duration> for ExpireAfter {
    fn from(duration: Duration) -> Self {
        ExpireAfter::After(duration)
    }
}

impl From<SystemTime> for ExpireAfter {
    fn from(at: SystemTime) -> Self {
        ExpireAfter::At(at)
    }
}

/// The text given to [`ExpireAfter::from_str`] was not an expiry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid expiry {0:?}: expected `never`, `0`, `immediately` or a duration such as `30s`, `5m`, `2h`, `1d`")]
pub struct ParseExpireAfterError(String);

impl FromStr for ExpireAfter {
    type Err = ParseExpireAfterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || ParseExpireAfterError(text.to_owned());
        let trimmed = text.trim();
        match trimmed {
            "never" | "-1" => return Ok(ExpireAfter::Never),
            "0" => return Ok(ExpireAfter::DoNotCache),
            "immediately" => return Ok(ExpireAfter::Immediately),
            _ => {}
        }
        let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let seconds_per_unit = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(invalid()),
        };
        let seconds = number.checked_mul(seconds_per_unit).ok_or_else(invalid)?;
        Ok(ExpireAfter::After(Duration::from_secs(seconds)))
    }
}

impl fmt::Display for ExpireAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpireAfter::Never => f.write_str("never"),
            ExpireAfter::Immediately => f.write_str("immediately"),
            ExpireAfter::DoNotCache => f.write_str("0"),
            ExpireAfter::After(duration) => write!(f, "{}s", duration.as_secs()),
            ExpireAfter::At(at) => f.write_str(&httpdate::fmt_http_date(*at)),
        }
    }
}

/// How stale an entry may be and still be served: for `stale_if_error` (the
/// origin failed) and `stale_while_revalidate` (refresh in the background).
///
/// `Never` still honours the response's own `stale-if-error=N` /
/// `stale-while-revalidate=N` directives (RFC 5861).
///
/// ```
/// use std::time::Duration;
/// use edgecache::StaleWindow;
///
/// assert_eq!(StaleWindow::from(true), StaleWindow::Always);
/// assert_eq!(StaleWindow::from(Duration::from_secs(60)), StaleWindow::Within(Duration::from_secs(60)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StaleWindow {
    /// Only as the response's directive allows (the default).
    #[default]
    Never,
    /// However stale.
    Always,
    /// Up to this long past expiry.
    Within(Duration),
}

impl From<bool> for StaleWindow {
    fn from(enabled: bool) -> Self {
        if enabled {
            StaleWindow::Always
        } else {
            StaleWindow::Never
        }
    }
}

impl From<Duration> for StaleWindow {
    fn from(duration: Duration) -> Self {
        StaleWindow::Within(duration)
    }
}

impl StaleWindow {
    /// Whether an entry `staleness` past its expiry may be served, given the
    /// stored response's headers (for the `directive=N` form).
    pub(crate) fn allows(self, staleness: Duration, headers: &HeaderMap, directive: &str) -> bool {
        match self {
            StaleWindow::Always => true,
            StaleWindow::Within(max) => staleness <= max,
            StaleWindow::Never => {
                directive_seconds(headers, directive).is_some_and(|max| staleness <= Duration::from_secs(max))
            }
        }
    }
}

/// The value of a `Cache-Control` directive of the form `name=N`.
fn directive_seconds(headers: &HeaderMap, directive: &str) -> Option<u64> {
    cache_control(headers)
        .find(|(name, _)| name.eq_ignore_ascii_case(directive))
        .and_then(|(_, value)| value?.trim_matches('"').parse().ok())
}

/// What storing a response comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// Don't store it.
    DoNotStore,
    /// Store it; fresh until the given moment, or forever with `None`.
    Until(Option<SystemTime>),
}

/// A predicate on responses: `false` keeps a response out of the cache.
pub(crate) type ResponseFilter = Arc<dyn Fn(&http::response::Parts) -> bool + Send + Sync>;

/// The expiry and filter rules of one cache.
#[derive(Clone)]
pub(crate) struct Rules {
    pub(crate) default_expire_after: ExpireAfter,
    url_patterns: GlobSet,
    url_expire_after: Vec<ExpireAfter>,
    pub(crate) allowed_methods: Vec<Method>,
    pub(crate) allowed_statuses: Vec<StatusCode>,
    pub(crate) filter: Option<ResponseFilter>,
    pub(crate) honor_cache_control: bool,
}

impl Rules {
    pub(crate) fn new(
        default_expire_after: ExpireAfter,
        url_expire_after: Vec<(String, ExpireAfter)>,
        allowed_methods: Vec<Method>,
        allowed_statuses: Vec<StatusCode>,
        filter: Option<ResponseFilter>,
        honor_cache_control: bool,
    ) -> Result<Self, Error> {
        let mut patterns = GlobSetBuilder::new();
        for (pattern, _) in &url_expire_after {
            let glob = GlobBuilder::new(&url_glob(pattern))
                .case_insensitive(true)
                .build()
                .map_err(|source| Error::UrlPattern {
                    pattern: pattern.clone(),
                    source,
                })?;
            patterns.add(glob);
        }
        let url_patterns = patterns.build().map_err(|source| Error::UrlPattern {
            pattern: String::new(),
            source,
        })?;
        Ok(Self {
            default_expire_after,
            url_patterns,
            url_expire_after: url_expire_after.into_iter().map(|(_, expire)| expire).collect(),
            allowed_methods,
            allowed_statuses,
            filter,
            honor_cache_control,
        })
    }

    pub(crate) fn allows_method(&self, method: &Method) -> bool {
        self.allowed_methods.contains(method)
    }

    /// The configured expiry: per request, else the first URL pattern that
    /// matches, else the cache default.
    pub(crate) fn configured_expiry(&self, per_request: Option<ExpireAfter>, url: &Url) -> ExpireAfter {
        if let Some(expire) = per_request {
            return expire;
        }
        if !self.url_expire_after.is_empty() {
            let without_scheme = &url.as_str()[url.scheme().len() + 3..];
            if let Some(first) = self.url_patterns.matches(without_scheme).into_iter().min() {
                return self.url_expire_after[first];
            }
        }
        self.default_expire_after
    }

    /// Whether, and until when, a response may be stored. `request` is the
    /// request as sent (for `Cache-Control` in the request and RFC 9111
    /// age calculation); `configured` comes from [`Rules::configured_expiry`].
    pub(crate) fn lifetime(
        &self,
        request: &http::request::Parts,
        response: &http::response::Parts,
        configured: ExpireAfter,
        now: SystemTime,
    ) -> Lifetime {
        if !self.allowed_statuses.contains(&response.status)
            || configured == ExpireAfter::DoNotCache
            || has_directive(&request.headers, "no-store")
            || has_directive(&response.headers, "no-store")
            || response
                .headers
                .get(http::header::VARY)
                .is_some_and(|vary| vary.as_bytes().trim_ascii() == b"*")
            || self.filter.as_ref().is_some_and(|keep| !keep(response))
        {
            return Lifetime::DoNotStore;
        }
        let until = if self.honor_cache_control && has_explicit_freshness(&response.headers) {
            let options = CacheOptions {
                shared: false,
                ..CacheOptions::default()
            };
            let policy = CachePolicy::new_options(request, response, now, options);
            Some(now + policy.time_to_live(now))
        } else {
            match configured {
                ExpireAfter::Never => None,
                ExpireAfter::Immediately | ExpireAfter::DoNotCache => Some(now),
                ExpireAfter::After(duration) => Some(now.checked_add(duration).unwrap_or(now)),
                ExpireAfter::At(at) => Some(at),
            }
        };
        // An entry that is stale on arrival is only worth keeping when it can
        // be revalidated.
        if until.is_some_and(|until| until <= now) && !has_validator(&response.headers) {
            return Lifetime::DoNotStore;
        }
        Lifetime::Until(until)
    }
}

/// Turns a user's URL pattern into a glob over scheme-less URLs that also
/// matches everything below it: `site.com/static` covers
/// `http*://site.com/static**`.
fn url_glob(pattern: &str) -> String {
    let without_scheme = pattern.split_once("://").map_or(pattern, |(_, rest)| rest);
    if without_scheme.ends_with('*') {
        without_scheme.to_owned()
    } else {
        format!("{without_scheme}*")
    }
}

/// Whether a `Cache-Control` header carries `directive`.
pub(crate) fn has_directive(headers: &HeaderMap, directive: &str) -> bool {
    cache_control(headers).any(|(name, _)| name.eq_ignore_ascii_case(directive))
}

/// The directives of every `Cache-Control` header, as `(name, value)`.
fn cache_control(headers: &HeaderMap) -> impl Iterator<Item = (&str, Option<&str>)> {
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
fn has_explicit_freshness(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::EXPIRES)
        || has_directive(headers, "max-age")
        || has_directive(headers, "no-cache")
        || (!headers.contains_key(http::header::CACHE_CONTROL)
            && headers.get(http::header::PRAGMA).is_some_and(|pragma| {
                pragma
                    .as_bytes()
                    .windows(8)
                    .any(|w| w.eq_ignore_ascii_case(b"no-cache"))
            }))
}

pub(crate) fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::ETAG) || headers.contains_key(http::header::LAST_MODIFIED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(patterns: &[(&str, ExpireAfter)]) -> Rules {
        Rules::new(
            ExpireAfter::After(Duration::from_secs(1)),
            patterns.iter().map(|(p, e)| (p.to_string(), *e)).collect(),
            vec![Method::GET],
            vec![StatusCode::OK],
            None,
            true,
        )
        .expect("valid patterns")
    }

    #[test]
    fn url_patterns_match_without_scheme_as_prefix_first_match_wins() {
        let rules = rules(&[
            ("site.com/static", ExpireAfter::Never),
            ("https://site.com", ExpireAfter::Immediately),
            ("*.example.org/api/*/items", ExpireAfter::DoNotCache),
        ]);
        let expiry = |url: &str| rules.configured_expiry(None, &Url::parse(url).expect("url"));
        assert_eq!(expiry("http://site.com/static/app.js"), ExpireAfter::Never);
        assert_eq!(expiry("https://site.com/staticfiles"), ExpireAfter::Never);
        assert_eq!(expiry("https://site.com/other"), ExpireAfter::Immediately);
        assert_eq!(
            expiry("https://a.example.org/api/v1/items?x=1"),
            ExpireAfter::DoNotCache
        );
        assert_eq!(
            expiry("https://elsewhere.com/"),
            ExpireAfter::After(Duration::from_secs(1))
        );
        let per_request = rules.configured_expiry(
            Some(ExpireAfter::Never),
            &Url::parse("https://site.com/other").expect("url"),
        );
        assert_eq!(per_request, ExpireAfter::Never);
    }

    #[test]
    fn bad_patterns_are_reported_with_the_pattern() {
        let error = Rules::new(
            ExpireAfter::Never,
            vec![("site.com/[".into(), ExpireAfter::Never)],
            vec![],
            vec![],
            None,
            true,
        )
        .err()
        .expect("an unclosed class is an error");
        assert!(error.to_string().contains("site.com/["), "{error}");
    }

    #[test]
    fn expiry_text_parses_and_rejects_garbage() {
        assert_eq!("30s".parse(), Ok(ExpireAfter::After(Duration::from_secs(30))));
        assert_eq!("2h".parse(), Ok(ExpireAfter::After(Duration::from_secs(7200))));
        assert_eq!("1d".parse(), Ok(ExpireAfter::After(Duration::from_secs(86_400))));
        assert_eq!("0".parse(), Ok(ExpireAfter::DoNotCache));
        assert_eq!("immediately".parse(), Ok(ExpireAfter::Immediately));
        for bad in ["", "5x", "m", "-5s", "99999999999999999999d"] {
            assert!(bad.parse::<ExpireAfter>().is_err(), "{bad:?} should not parse");
        }
    }
}
