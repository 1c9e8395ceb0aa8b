//! The versioned cache's data model, as the server's JSON API carries it.
//! One definition serves both ends: the server serializes these, clients
//! deserialize them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

mod requests;
mod selection;

pub use requests::{Change, LimitsChange, Pin, Registration};
pub use selection::Selection;

/// A registered request the server keeps versions of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resource {
    /// The resource's id.
    pub id: String,
    /// The request method (upper case).
    pub method: String,
    /// The URL, without its query (that is in `query`).
    pub url: String,
    /// Query parameters, sorted by name then value.
    pub query: Vec<(String, String)>,
    /// Request headers. Values of credential headers read `<redacted>`.
    pub headers: BTreeMap<String, String>,
    /// The request body, if any: a JSON value, sent as JSON; a string is
    /// sent as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub body: Option<serde_json::Value>,
    /// The group the resource belongs to.
    pub group: String,
    /// When new versions are fetched.
    pub strategy: Strategy,
    /// How many versions are kept.
    pub limits: Limits,
    /// When the resource was registered.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// When the origin was last asked, if ever.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_checked_at: Option<Timestamp>,
    /// When the next scheduled fetch is due; `null` when none is scheduled.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub next_check_at: Option<Timestamp>,
    /// When the last fetch ended, whether it succeeded or failed.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_attempt_at: Option<Timestamp>,
    /// Why the last fetch failed; `null` once a fetch succeeds. Content is
    /// still served from the newest ready version meanwhile.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Fetches that failed in a row. Each failure waits twice as long as
    /// the one before for its retry (10 s, 20 s, … up to an hour).
    #[serde(default)]
    pub failures: u32,
    /// Free-form notes about the resource, as registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A link about the resource (a ticket, a dashboard), as registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// Whether each new version whose body differs from the one before is
    /// purged at the server's purge targets (its URL and its cache tags).
    #[serde(default)]
    pub purge_on_change: bool,
}

/// Where a version is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VersionStatus {
    /// Waiting for a fetch slot.
    Pending,
    /// Its body is being downloaded.
    Downloading,
    /// Complete: the only status ever served.
    Ready,
    /// The fetch failed; `error` says why.
    Failed,
}

impl VersionStatus {
    /// The status as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Downloading => "downloading",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }

    /// Parses the API's spelling.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Downloading, Self::Ready, Self::Failed]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

impl fmt::Display for VersionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One fetched response of a resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Version {
    /// The version's id: time-ordered (UUIDv7), so newer versions sort later.
    pub id: String,
    /// Where the version is in its life.
    pub status: VersionStatus,
    /// When the fetch was asked for.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// When the body was complete.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub fetched_at: Option<Timestamp>,
    /// When the origin last confirmed this content (a 304, or the same body).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_checked_at: Option<Timestamp>,
    /// The origin's status code.
    pub status_code: Option<u16>,
    /// The origin's response headers (name, value), in order.
    pub headers: Vec<(String, String)>,
    /// The body's size in bytes.
    pub size: Option<u64>,
    /// The body's SHA-256, lower-case hex: also the content's `ETag`.
    pub sha256: Option<String>,
    /// The origin's `Content-Type`.
    pub media_type: Option<String>,
    /// The origin's `ETag`.
    pub etag: Option<String>,
    /// The origin's `Last-Modified`.
    pub last_modified: Option<String>,
    /// User labels.
    pub tags: Vec<String>,
    /// Cache tags the origin's response carried (`Edge-Cache-Tag`,
    /// `Cache-Tag`, `Surrogate-Key` by default): what `purge tag` reaches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_tags: Vec<String>,
    /// Whether the version is pinned now (an expired timed pin reads `false`).
    pub pinned: bool,
    /// When a timed pin ends.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub pinned_until: Option<Timestamp>,
    /// Why the fetch failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Version {
    #[doc(hidden)] // the server's, shared through this crate; not an API of its own
    /// A ready version made from an origin's answer: its status, the
    /// headers `keep` accepts, and the validators and media type. Size,
    /// digest and times are the caller's to fill.
    pub fn from_origin(
        id: String,
        status_code: u16,
        headers: &http::HeaderMap,
        keep: impl Fn(&http::HeaderName) -> bool,
        now: Timestamp,
    ) -> Self {
        let text = |name: http::HeaderName| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            id,
            status: VersionStatus::Ready,
            created_at: now,
            fetched_at: None,
            last_checked_at: None,
            status_code: Some(status_code),
            headers: headers
                .iter()
                .filter(|(name, _)| keep(name))
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            size: None,
            sha256: None,
            media_type: text(http::header::CONTENT_TYPE),
            etag: text(http::header::ETAG),
            last_modified: text(http::header::LAST_MODIFIED),
            tags: Vec::new(),
            cache_tags: Vec::new(),
            pinned: false,
            pinned_until: None,
            error: None,
        }
    }

    #[doc(hidden)] // the server's, shared through this crate; not an API of its own
    /// The version as a [`VERSION_METADATA`] header value; `None` past
    /// 64 KiB (an origin with huge headers), where the client asks for the
    /// metadata instead, so a response head stays within what clients read.
    pub fn to_header(&self) -> Option<http::HeaderValue> {
        use base64::Engine as _;
        let json = serde_json::to_vec(self).ok()?;
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        if encoded.len() > 64 * 1024 {
            return None;
        }
        http::HeaderValue::from_str(&encoded).ok()
    }

    /// Reads a [`VERSION_METADATA`] header value; `None` if it isn't one.
    pub(crate) fn from_header(value: &http::HeaderValue) -> Option<Self> {
        use base64::Engine as _;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value.as_bytes())
            .ok()?;
        serde_json::from_slice(&json).ok()
    }
}

/// What the server says of a request it carried out, but not as asked (a
/// registration that found the resource registered differently).
pub const WARNING_HEADER: &str = "x-edgecache-warning";

/// The request header that asks for the selected version's metadata, and
/// the response header that carries it (base64url of its JSON) beside its
/// body, so a client needs no second request to learn what it got.
pub const VERSION_METADATA: &str = "x-edgecache-version-metadata";

/// When a resource's new versions are fetched. The default is
/// [`Strategy::RemoteChanged`] with its defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// Fetch once, at registration.
    Never,
    /// Fetch again when the newest version is older than `seconds`.
    Age {
        /// The age that triggers a fetch.
        #[cfg_attr(feature = "openapi", schema(minimum = 1))]
        seconds: u64,
    },
    /// Fetch on a schedule.
    Cron {
        /// Standard 5-field cron expression (minute hour day month weekday).
        expr: String,
        /// IANA time zone the expression is read in; UTC when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timezone: Option<String>,
        /// Also fetch when the server starts (default `false`: a restart
        /// refetches nothing, and a slot missed while the server was down
        /// still runs once).
        #[serde(default)]
        run_at_start: bool,
    },
    /// Ask the origin every `check_every_seconds` with a conditional GET
    /// (the newest version's `ETag` / `Last-Modified`); a 304 only records
    /// the check. Without validators, or when the newest version is older
    /// than `fallback_max_age_seconds`, a full GET whose body is compared by
    /// hash.
    RemoteChanged {
        /// How often the origin is asked.
        #[serde(default = "default_check_every")]
        #[cfg_attr(feature = "openapi", schema(minimum = 1))]
        check_every_seconds: u64,
        /// The age after which a full GET is made regardless of validators.
        #[serde(default = "default_fallback_max_age")]
        fallback_max_age_seconds: u64,
    },
    /// Fetch when content is asked for and the newest version was checked
    /// more than `min_interval_seconds` ago.
    OnRequest {
        /// The least time between two fetches.
        #[serde(default)]
        min_interval_seconds: u64,
    },
}

fn default_check_every() -> u64 {
    21_600
}
fn default_fallback_max_age() -> u64 {
    86_400
}

impl Default for Strategy {
    fn default() -> Self {
        Self::RemoteChanged {
            check_every_seconds: default_check_every(),
            fallback_max_age_seconds: default_fallback_max_age(),
        }
    }
}

impl Strategy {
    /// Fetch again when the newest version is older than `age`.
    pub fn age(age: Duration) -> Self {
        Self::Age { seconds: age.as_secs() }
    }

    /// Fetch on a 5-field cron schedule, read in UTC, also at server start.
    pub fn cron(expr: impl Into<String>) -> Self {
        Self::Cron {
            expr: expr.into(),
            timezone: None,
            run_at_start: false,
        }
    }
}

/// How many versions of a resource are kept. The oldest beyond a limit are
/// deleted when a new version crosses it; pinned versions are never deleted
/// to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Ready versions kept that are not pinned (default 2).
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_unpinned: u32,
    /// Pinned versions allowed; a pin beyond is refused (default 10).
    pub max_pinned: u32,
    /// Failed fetches kept for inspection (default 3).
    pub max_failed: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_unpinned: 2,
            max_pinned: 10,
            max_failed: 3,
        }
    }
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// How many items the whole listing has.
    pub total: u64,
}

/// The body of every error answer: `{"error":{"code","message","field"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// A stable, machine-readable code: `invalid_json`, `invalid`,
    /// `not_found`, `no_matching_version`, `not_ready`, `pinned`,
    /// `pin_limit`, `unauthorized`, `forbidden`, `internal`, `index_unavailable`.
    pub code: String,
    /// A sentence for a person.
    pub message: String,
    /// The request field at fault, for `invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

// How a resource's request is sent, the same way by the server's fetcher,
// its key, and a client's local fallback.

/// The URL with the query pairs appended.
pub fn url_with_query(url: &str, query: &[(String, String)]) -> Result<url::Url, url::ParseError> {
    let mut url = url::Url::parse(url)?;
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
}

/// The headers as a map; names or values a header can't carry are left out
/// (registration refuses them, so only stored data could hold one).
pub fn header_map(headers: &BTreeMap<String, String>) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The bytes of a `body` field: a string as it is; any other JSON value as
/// JSON, with `Content-Type: application/json` added unless `headers`
/// have one.
pub fn encode_body(body: Option<&serde_json::Value>, headers: &mut http::HeaderMap) -> Option<Vec<u8>> {
    match body? {
        serde_json::Value::String(text) => Some(text.clone().into_bytes()),
        other => {
            if !headers.contains_key(http::header::CONTENT_TYPE) {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
            }
            Some(other.to_string().into_bytes())
        }
    }
}

/// `true`, `false`, `1` or `0`, and nothing else.
pub fn strict_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Whether `tag` is a valid tag: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn is_valid_tag(tag: &str) -> bool {
    (1..=64).contains(&tag.len())
        && tag
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn version(id: &str, tags: &[&str], pinned: bool, fetched_second: i64) -> Version {
        Version {
            id: id.into(),
            status: VersionStatus::Ready,
            created_at: Timestamp::UNIX_EPOCH,
            fetched_at: Timestamp::from_second(fetched_second).ok(),
            last_checked_at: None,
            status_code: Some(200),
            headers: Vec::new(),
            size: Some(1),
            sha256: None,
            media_type: None,
            etag: None,
            last_modified: None,
            tags: tags.iter().map(|tag| tag.to_string()).collect(),
            cache_tags: Vec::new(),
            pinned,
            pinned_until: None,
            error: None,
        }
    }

    #[test]
    fn strategies_and_limits_read_as_documented() {
        let strategy: Strategy = serde_json::from_str(r#"{"kind":"remote_changed"}"#).unwrap();
        assert_eq!(strategy, Strategy::default());
        let cron: Strategy = serde_json::from_str(r#"{"kind":"cron","expr":"0 0 * * *"}"#).unwrap();
        assert_eq!(cron, Strategy::cron("0 0 * * *"));
        assert!(serde_json::from_str::<Strategy>(r#"{"kind":"sometimes"}"#).is_err());
        let limits: Limits = serde_json::from_str(r#"{"max_pinned":1}"#).unwrap();
        assert_eq!(
            limits,
            Limits {
                max_pinned: 1,
                ..Limits::default()
            }
        );
        assert!(
            is_valid_tag("v1.2_ok-3") && !is_valid_tag("") && !is_valid_tag("a b") && !is_valid_tag(&"x".repeat(65))
        );
    }

    #[test]
    fn a_version_travels_in_its_metadata_header() {
        let mut original = version("v1", &["ok"], true, 100);
        original.headers = vec![("content-type".into(), "text/csv; charset=ünïcode".into())];
        let header = original.to_header().expect("a header value");
        assert_eq!(Version::from_header(&header), Some(original.clone()));
        original.headers = vec![("x-huge".into(), "x".repeat(64 * 1024))];
        assert_eq!(original.to_header(), None, "too large for a response head");
    }

    proptest::proptest! {
        #[test]
        fn any_metadata_header_reads_as_a_version_or_nothing(bytes in proptest::collection::vec(0x20u8..0x7f, 0..200)) {
            if let Ok(value) = http::HeaderValue::from_bytes(&bytes) {
                let _ = Version::from_header(&value);
            }
        }
    }
}
