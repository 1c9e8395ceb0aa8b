//! What gets stored, and for how long (RFC 9111).
//!
//! Expiry precedence, from strongest to weakest:
//!
//! 1. `Cache-Control: no-store` (request or response) is never stored, nor
//!    is `private` in a shared cache, and a configured
//!    [`ExpireAfter::DoNotCache`] always wins;
//! 2. the response's own freshness (`Cache-Control: max-age`, `s-maxage` in
//!    a shared cache, `no-cache`, `Expires`), unless header-driven expiry is
//!    turned off;
//! 3. the per-request [`ExpireAfter`] (a request extension), then the first
//!    URL pattern that matches, then the cache-wide default, whichever was
//!    configured first in that order;
//! 4. heuristic freshness (RFC 9111 §4.2.2): 10 % of the time since
//!    `Last-Modified`, at most `heuristic_max` (one day by default), for the
//!    statuses RFC 9110 §15.1 makes heuristically cacheable;
//! 5. otherwise the response is stored only if it has a validator (`ETag`,
//!    `Last-Modified`), and revalidated before each use.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use http::{HeaderMap, HeaderName, Method, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy};
use url::Url;

use super::directives::{
    directive_seconds, has_directive, has_explicit_freshness, has_validator, initial_age, normalized_for_policy,
    vary_names,
};
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

/// What storing a response comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// Don't store it.
    DoNotStore,
    /// Store it: fresh until `expires` (forever with `None`), and already
    /// `initial_age` old on arrival (RFC 9111 §4.2.3).
    Until {
        expires: Option<SystemTime>,
        initial_age: Duration,
    },
}

/// A predicate on responses: `false` keeps a response out of the cache.
pub(crate) type ResponseFilter = Arc<dyn Fn(&http::response::Parts) -> bool + Send + Sync>;

/// Statuses RFC 9110 §15.1 makes heuristically cacheable (less 206: this
/// cache does not combine partial content, so it never stores it).
const HEURISTICALLY_CACHEABLE: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The expiry and filter rules of one cache.
#[derive(Clone)]
pub(crate) struct Rules {
    pub(crate) default_expire_after: Option<ExpireAfter>,
    url_patterns: GlobSet,
    url_expire_after: Vec<ExpireAfter>,
    pub(crate) allowed_methods: Vec<Method>,
    /// The user's explicit list; `None` follows RFC 9111.
    pub(crate) allowed_statuses: Option<Vec<StatusCode>>,
    pub(crate) filter: Option<ResponseFilter>,
    pub(crate) honor_cache_control: bool,
    /// RFC 9111 shared-cache rules.
    pub(crate) shared: bool,
    pub(crate) heuristic_max: Duration,
    /// Targeted cache-control fields (RFC 9213), most specific first;
    /// empty in a private cache, which ignores them.
    targets: Vec<HeaderName>,
}

/// What [`Rules::new`] needs besides the URL patterns.
pub(crate) struct RuleOptions {
    pub(crate) default_expire_after: Option<ExpireAfter>,
    pub(crate) allowed_methods: Vec<Method>,
    pub(crate) allowed_statuses: Option<Vec<StatusCode>>,
    pub(crate) filter: Option<ResponseFilter>,
    pub(crate) honor_cache_control: bool,
    pub(crate) shared: bool,
    pub(crate) heuristic_max: Duration,
    pub(crate) targets: Vec<HeaderName>,
}

impl Rules {
    pub(crate) fn new(url_expire_after: Vec<(String, ExpireAfter)>, options: RuleOptions) -> Result<Self, Error> {
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
            default_expire_after: options.default_expire_after,
            url_patterns,
            url_expire_after: url_expire_after.into_iter().map(|(_, expire)| expire).collect(),
            allowed_methods: options.allowed_methods,
            allowed_statuses: options.allowed_statuses,
            filter: options.filter,
            honor_cache_control: options.honor_cache_control,
            shared: options.shared,
            heuristic_max: options.heuristic_max,
            targets: if options.shared { options.targets } else { Vec::new() },
        })
    }

    /// The response headers whose cache directives apply: in a shared
    /// cache, a valid targeted field (RFC 9213) replaces `Cache-Control`
    /// and `Expires`.
    pub(crate) fn directives_of<'a>(&self, headers: &'a HeaderMap) -> Cow<'a, HeaderMap> {
        if self.targets.is_empty() {
            return Cow::Borrowed(headers);
        }
        super::targeted::effective_headers(headers, &self.targets)
    }

    pub(crate) fn allows_method(&self, method: &Method) -> bool {
        self.allowed_methods.contains(method)
    }

    /// The configured expiry: per request, else the first URL pattern that
    /// matches, else the cache default; `None` when none was configured.
    pub(crate) fn configured_expiry(&self, per_request: Option<ExpireAfter>, url: &Url) -> Option<ExpireAfter> {
        if per_request.is_some() {
            return per_request;
        }
        if !self.url_expire_after.is_empty() {
            let without_scheme = url.as_str().get(url.scheme().len() + 3..).unwrap_or_default();
            if let Some(first) = self.url_patterns.matches(without_scheme).into_iter().min() {
                return self.url_expire_after.get(first).copied();
            }
        }
        self.default_expire_after
    }

    /// Whether a status may be stored: the user's list when set; otherwise
    /// the heuristically cacheable ones, and, with explicit freshness, 302,
    /// 307 and the other 4xx. Never 206 (partial content is not combined).
    fn allows_status(&self, status: StatusCode, explicit_freshness: bool) -> bool {
        if status == StatusCode::PARTIAL_CONTENT {
            return false;
        }
        match &self.allowed_statuses {
            Some(allowed) => allowed.contains(&status),
            None => {
                HEURISTICALLY_CACHEABLE.contains(&status.as_u16())
                    || (explicit_freshness
                        && (status == StatusCode::FOUND
                            || status == StatusCode::TEMPORARY_REDIRECT
                            || status.is_client_error()))
            }
        }
    }

    /// Whether, and until when, a response may be stored. `request` is the
    /// request as sent, `requested_at` when it was sent and `now` when the
    /// response arrived; `configured` comes from [`Rules::configured_expiry`].
    pub(crate) fn lifetime(
        &self,
        request: &http::request::Parts,
        response: &http::response::Parts,
        configured: Option<ExpireAfter>,
        requested_at: SystemTime,
        now: SystemTime,
    ) -> Lifetime {
        let directives = self.directives_of(&response.headers);
        let headers = &*directives;
        let explicit = self.honor_cache_control && has_explicit_freshness(headers, self.shared);
        if !self.allows_status(response.status, explicit)
            || configured == Some(ExpireAfter::DoNotCache)
            || has_directive(&request.headers, "no-store")
            || has_directive(headers, "no-store")
            || vary_names(headers).any(|name| name == "*")
            || (self.shared && !self.shared_may_store(request, headers))
            || self.filter.as_ref().is_some_and(|keep| !keep(response))
        {
            return Lifetime::DoNotStore;
        }
        let initial_age = initial_age(headers, requested_at, now);
        let freshness = |public_heuristic: bool| {
            let normalized = normalized_for_policy(headers, initial_age);
            let mut parts = http::Response::new(());
            // Status and storability were judged above; the policy only
            // measures freshness.
            *parts.headers_mut() = normalized;
            let (parts, ()) = parts.into_parts();
            let options = CacheOptions {
                shared: self.shared,
                cache_heuristic: if public_heuristic { 0.1 } else { 0.0 },
                immutable_min_time_to_live: Duration::ZERO,
                ignore_cargo_cult: false,
            };
            let request = http::Request::new(());
            let (mut request, ()) = request.into_parts();
            request.uri = http::Uri::from_static("http://localhost/");
            CachePolicy::new_options(&request, &parts, now, options).time_to_live(now)
        };
        let expires = if explicit {
            now.checked_add(freshness(false))
        } else {
            match configured {
                Some(ExpireAfter::Never) => None,
                Some(ExpireAfter::Immediately | ExpireAfter::DoNotCache) => Some(now),
                // Too far to represent: as good as never.
                Some(ExpireAfter::After(duration)) => now.checked_add(duration),
                Some(ExpireAfter::At(at)) => Some(at),
                None => {
                    let heuristic =
                        HEURISTICALLY_CACHEABLE.contains(&response.status.as_u16()) || has_directive(headers, "public");
                    let ttl = if heuristic {
                        freshness(true).min(self.heuristic_max.saturating_sub(initial_age))
                    } else {
                        Duration::ZERO
                    };
                    now.checked_add(ttl)
                }
            }
        };
        // An entry that is stale on arrival is only worth keeping when it can
        // be revalidated.
        if expires.is_some_and(|expires| expires <= now) && !has_validator(headers) {
            return Lifetime::DoNotStore;
        }
        Lifetime::Until { expires, initial_age }
    }

    /// RFC 9111 §3: a shared cache stores no `private` response, and a
    /// response to a request with `Authorization` only when `public`,
    /// `s-maxage` or `must-revalidate` allows it (§3.5).
    fn shared_may_store(&self, request: &http::request::Parts, headers: &HeaderMap) -> bool {
        !has_directive(headers, "private")
            && (!request.headers.contains_key(http::header::AUTHORIZATION)
                || has_directive(headers, "public")
                || has_directive(headers, "s-maxage")
                || has_directive(headers, "must-revalidate"))
    }

    /// Whether a stored response must not be served stale (RFC 9111
    /// §5.2.2.2, §5.2.2.8, §5.2.2.10): `must-revalidate`, `no-cache`, and in
    /// a shared cache `proxy-revalidate` and `s-maxage`.
    pub(crate) fn forbids_stale(&self, headers: &HeaderMap) -> bool {
        let headers = &*self.directives_of(headers);
        has_directive(headers, "must-revalidate")
            || has_directive(headers, "no-cache")
            || (self.shared && (has_directive(headers, "proxy-revalidate") || has_directive(headers, "s-maxage")))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn options(default_expire_after: Option<ExpireAfter>) -> RuleOptions {
        RuleOptions {
            default_expire_after,
            allowed_methods: vec![Method::GET],
            allowed_statuses: None,
            filter: None,
            honor_cache_control: true,
            shared: false,
            heuristic_max: Duration::from_secs(86_400),
            targets: Vec::new(),
        }
    }

    fn rules(patterns: &[(&str, ExpireAfter)]) -> Rules {
        Rules::new(
            patterns.iter().map(|(p, e)| (p.to_string(), *e)).collect(),
            options(Some(ExpireAfter::After(Duration::from_secs(1)))),
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
        let expiry = |url: &str| {
            rules
                .configured_expiry(None, &Url::parse(url).expect("url"))
                .expect("a default is configured")
        };
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
        assert_eq!(per_request, Some(ExpireAfter::Never));
    }

    #[test]
    fn bad_patterns_are_reported_with_the_pattern() {
        let error = Rules::new(vec![("site.com/[".into(), ExpireAfter::Never)], options(None))
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
