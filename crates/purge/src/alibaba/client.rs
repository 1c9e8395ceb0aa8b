//! `AlibabaCdnClient`: one signed, rate-limited, retried call per method.

use std::collections::BTreeMap;
use std::fmt;

use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use url::Url;

use super::sign::canonical_query;
use super::{Credentials, Signer};
use crate::{Backoff, TokenBucket};

/// Alibaba Cloud CDN's API endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://cdn.aliyuncs.com";
/// The API version these calls follow.
pub const API_VERSION: &str = "2018-05-10";

/// What a refresh's paths are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ObjectType {
    /// Single URLs (the default).
    #[default]
    File,
    /// Everything under a directory URL, which ends with `/`.
    Directory,
    /// URLs matching a regular expression (one per call).
    Regex,
    /// URLs whatever their query string.
    IgnoreParams,
}

impl ObjectType {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::File => "File",
            ObjectType::Directory => "Directory",
            ObjectType::Regex => "Regex",
            ObjectType::IgnoreParams => "IgnoreParams",
        }
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a prefetch warms the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Area {
    /// Points of presence in the Chinese mainland.
    Domestic,
    /// Points of presence outside the Chinese mainland.
    Overseas,
}

/// Options of a prefetch (`PushObjectCache`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefetchOptions {
    /// Where to prefetch; `None` leaves it to the domain's setting.
    pub area: Option<Area>,
    /// Also warm the L2 (origin shield) nodes.
    pub l2_preload: bool,
    /// Headers the CDN sends with its prefetch requests.
    pub headers: BTreeMap<String, String>,
}

/// A refresh or prefetch the CDN accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The tasks it created (the API may return several, comma-separated).
    pub task_ids: Vec<String>,
    /// Quote it to Alibaba Cloud support.
    pub request_id: String,
}

/// Today's refresh and prefetch quota (`DescribeRefreshQuota`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Quota {
    /// URL refreshes a day.
    #[serde(deserialize_with = "number", default)]
    pub url_quota: u64,
    /// URL refreshes left today.
    #[serde(deserialize_with = "number", default)]
    pub url_remain: u64,
    /// Directory refreshes a day.
    #[serde(deserialize_with = "number", default)]
    pub dir_quota: u64,
    /// Directory refreshes left today.
    #[serde(deserialize_with = "number", default)]
    pub dir_remain: u64,
    /// Regex refreshes a day.
    #[serde(deserialize_with = "number", default)]
    pub regex_quota: u64,
    /// Regex refreshes left today.
    #[serde(deserialize_with = "number", default)]
    pub regex_remain: u64,
    /// Prefetches a day.
    #[serde(deserialize_with = "number", default)]
    pub preload_quota: u64,
    /// Prefetches left today.
    #[serde(deserialize_with = "number", default)]
    pub preload_remain: u64,
    /// Parameter-ignoring refreshes a day.
    #[serde(deserialize_with = "number", default)]
    pub ignore_params_quota: u64,
    /// Parameter-ignoring refreshes left today.
    #[serde(deserialize_with = "number", default)]
    pub ignore_params_remain: u64,
}

/// The API sends quota numbers as strings.
pub(super) fn number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Text(String),
        Number(u64),
    }
    match Number::deserialize(deserializer)? {
        Number::Number(number) => Ok(number),
        Number::Text(text) => text.trim().parse().map_err(serde::de::Error::custom),
    }
}

/// A failed call, after any retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AlibabaError {
    /// The API refused the call.
    #[error("{action}: {code}: {message} (HTTP {status}, RequestId {request_id})")]
    Api {
        /// The API action.
        action: &'static str,
        /// The HTTP status.
        status: u16,
        /// The error code, such as `Throttling` or `QuotaExceeded.Refresh`.
        code: String,
        /// The API's explanation.
        message: String,
        /// Quote it to Alibaba Cloud support.
        request_id: String,
    },
    /// The call did not complete.
    #[error("{action}: {source}")]
    Transport {
        /// The API action.
        action: &'static str,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The call was not sent: the API would refuse it as it stands.
    #[error("{action}: not sent: {reason}")]
    Invalid {
        /// The API action.
        action: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The answer was not what the API documents.
    #[error("{action}: unexpected answer (HTTP {status}): {detail}")]
    Unexpected {
        /// The API action.
        action: &'static str,
        /// The HTTP status.
        status: u16,
        /// What was wrong, with the start of the body.
        detail: String,
    },
}

impl AlibabaError {
    /// The API's error code, if the API answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AlibabaError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The request id, if the API answered with one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            AlibabaError::Api { request_id, .. } => Some(request_id),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: throttling, per-minute
    /// limits, server errors and transport errors. A refused request
    /// (validation, quota, permissions) is never retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            AlibabaError::Api { status, code, .. } => *status >= 500 || retryable_code(code),
            AlibabaError::Transport { .. } => true,
            AlibabaError::Unexpected { status, .. } => *status >= 500,
            AlibabaError::Invalid { .. } => false,
        }
    }
}

/// Whether an API error code says trying again later may succeed:
/// throttling and per-minute limits.
pub(crate) fn retryable_code(code: &str) -> bool {
    code.starts_with("Throttling") || code.starts_with("QuotaPerMinuteExceeded")
}

/// Client-side call rates, kept below Alibaba Cloud's documented limits:
/// each is a burst size and a sustained rate per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// `RefreshObjectCaches` and `PushObjectCache` (50 calls/s per account).
    pub submit: (u32, f64),
    /// `DescribeRefreshTasks` (5 calls/s).
    pub describe: (u32, f64),
    /// `DescribeRefreshTaskById` (30 calls/s).
    pub describe_by_id: (u32, f64),
    /// `DescribeRefreshQuota` (20 calls/s).
    pub quota: (u32, f64),
}

impl Default for RateLimits {
    /// At most 50 submissions, 5 task listings, 30 task queries by id and
    /// 10 quota queries in any second.
    fn default() -> Self {
        Self {
            submit: (5, 45.0),
            describe: (1, 4.0),
            describe_by_id: (3, 27.0),
            quota: (1, 9.0),
        }
    }
}

/// A client for Alibaba Cloud CDN's refresh and prefetch API. Every call is
/// signed (ACS3-HMAC-SHA256), kept within [`RateLimits`], and retried with
/// backoff when [`AlibabaError::is_retryable`].
///
/// For lists of any length, [`AlibabaCdnClient::batch`] validates, checks the
/// quota, packs, submits, polls and reports.
///
/// ```no_run
/// use edgecache_purge::alibaba::{AlibabaCdnClient, Credentials, ObjectType};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let cdn = AlibabaCdnClient::new(Credentials::load(None)?)?;
/// println!("{} URL refreshes left today", cdn.quota().await?.url_remain);
/// let submitted = cdn.refresh(&["https://www.example.com/a.css".to_owned()], ObjectType::File, false).await?;
/// println!("task {}", submitted.task_ids.join(","));
/// # Ok(()) }
/// ```
pub struct AlibabaCdnClient {
    http: reqwest::Client,
    signer: Signer,
    endpoint: Url,
    backoff: Backoff,
    max_attempts: u32,
    submit: TokenBucket,
    describe: TokenBucket,
    describe_by_id: TokenBucket,
    quota: TokenBucket,
    force: bool,
}

impl fmt::Debug for AlibabaCdnClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlibabaCdnClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("credentials", self.signer.credentials())
            .finish_non_exhaustive()
    }
}

impl AlibabaCdnClient {
    /// A client for `https://cdn.aliyuncs.com` with these credentials.
    pub fn new(credentials: Credentials) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: edgecache_base::net::http_client()?,
            signer: Signer::new(credentials),
            endpoint: Url::parse(DEFAULT_ENDPOINT).unwrap_or_else(|_| unreachable!("a valid constant URL")),
            backoff: Backoff::default(),
            max_attempts: 6,
            submit: TokenBucket::new(1, 1.0),
            describe: TokenBucket::new(1, 1.0),
            describe_by_id: TokenBucket::new(1, 1.0),
            quota: TokenBucket::new(1, 1.0),
            force: false,
        }
        .rate_limits(RateLimits::default()))
    }

    /// Another endpoint, such as a regional one or a local stand-in
    /// (`http://127.0.0.1:8080`).
    pub fn endpoint(mut self, endpoint: Url) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// The client-side call rates. Default: [`RateLimits::default`].
    pub fn rate_limits(mut self, limits: RateLimits) -> Self {
        self.submit = TokenBucket::new(limits.submit.0, limits.submit.1);
        self.describe = TokenBucket::new(limits.describe.0, limits.describe.1);
        self.describe_by_id = TokenBucket::new(limits.describe_by_id.0, limits.describe_by_id.1);
        self.quota = TokenBucket::new(limits.quota.0, limits.quota.1);
        self
    }

    /// Delays between retries. Default: 0.5 s doubling to 30 s, with jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Whether refreshes through [`Purger`](crate::Purger) set
    /// `Force`: purge even what the origin reports unchanged. Without it, a
    /// directory or pattern refresh only marks copies for revalidation by
    /// `Last-Modified`, and a changed object whose date did not change stays
    /// stale. Default: off, Alibaba Cloud's default.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    pub(crate) fn forces(&self) -> bool {
        self.force
    }

    /// Attempts per call before giving up. Default: 6.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Refreshes (purges) paths: at most 1000 URLs, 100 directories or one
    /// regex per call, from at most 10 domains.
    pub async fn refresh(
        &self,
        paths: &[String],
        object_type: ObjectType,
        force: bool,
    ) -> Result<Submitted, AlibabaError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Answer {
            refresh_task_id: String,
            #[serde(default)]
            request_id: String,
        }
        let mut parameters = vec![
            ("ObjectPath", paths.join("\n")),
            ("ObjectType", object_type.as_str().to_owned()),
        ];
        if force {
            parameters.push(("Force", "true".to_owned()));
        }
        let answer: Answer = self.call("RefreshObjectCaches", &parameters).await?;
        Ok(Submitted {
            task_ids: split_ids(&answer.refresh_task_id),
            request_id: answer.request_id,
        })
    }

    /// Prefetches (warms) URLs: at most 100 per call.
    pub async fn prefetch(&self, paths: &[String], options: &PrefetchOptions) -> Result<Submitted, AlibabaError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Answer {
            push_task_id: String,
            #[serde(default)]
            request_id: String,
        }
        let mut parameters = vec![("ObjectPath", paths.join("\n"))];
        if let Some(area) = options.area {
            let area = match area {
                Area::Domestic => "domestic",
                Area::Overseas => "overseas",
            };
            parameters.push(("Area", area.to_owned()));
        }
        if options.l2_preload {
            parameters.push(("L2Preload", "true".to_owned()));
        }
        if !options.headers.is_empty() {
            parameters.push((
                "WithHeader",
                serde_json::to_string(&options.headers).unwrap_or_default(),
            ));
        }
        let answer: Answer = self.call("PushObjectCache", &parameters).await?;
        Ok(Submitted {
            task_ids: split_ids(&answer.push_task_id),
            request_id: answer.request_id,
        })
    }

    /// Today's quota.
    pub async fn quota(&self) -> Result<Quota, AlibabaError> {
        self.call("DescribeRefreshQuota", &[]).await
    }

    /// One API call: parameters in a signed form body, within the rate
    /// limits, retried while the error is retryable.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        action: &'static str,
        parameters: &[(&str, String)],
    ) -> Result<T, AlibabaError> {
        let bucket = match action {
            "RefreshObjectCaches" | "PushObjectCache" => &self.submit,
            "DescribeRefreshTasks" => &self.describe,
            "DescribeRefreshTaskById" => &self.describe_by_id,
            _ => &self.quota,
        };
        let body = canonical_query(parameters.iter().map(|(name, value)| (*name, value.as_str())));
        let attempts = edgecache_base::net::Attempts {
            backoff: self.backoff,
            max: self.max_attempts,
        };
        let policy = |outcome: &Result<T, AlibabaError>| match outcome {
            Err(error) if error.is_retryable() => edgecache_base::net::Verdict::Again(None),
            _ => edgecache_base::net::Verdict::Final,
        };
        let attempt = |_| async {
            bucket.take(1).await;
            self.send(action, &body).await
        };
        let after_failure = |outcome: &Result<T, AlibabaError>, next: Option<std::time::Duration>| {
            if let (Err(error), Some(_)) = (outcome, next) {
                tracing::warn!(error = %edgecache_base::net::error_chain(error), action, "Alibaba Cloud CDN call failed; retrying");
            }
            edgecache_base::net::AfterFailure::Retry
        };
        edgecache_base::net::send_with_retry(attempts, &policy, attempt, after_failure, std::future::pending)
            .await
            .0
    }

    async fn send<T: DeserializeOwned>(&self, action: &'static str, body: &str) -> Result<T, AlibabaError> {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-acs-action", HeaderValue::from_static(action));
        headers.insert("x-acs-version", HeaderValue::from_static(API_VERSION));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if !body.is_empty() {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        self.signer
            .sign(&http::Method::POST, &self.endpoint, &mut headers, body.as_bytes());
        let response = self
            .http
            .post(self.endpoint.clone())
            .headers(headers)
            .body(body.to_owned())
            .send()
            .await
            .map_err(|source| AlibabaError::Transport { action, source })?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| AlibabaError::Transport { action, source })?;
        let unexpected = |detail: String| AlibabaError::Unexpected {
            action,
            status,
            detail: format!(
                "{detail}: {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
        };
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|error| unexpected(error.to_string()));
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Problem {
            code: String,
            #[serde(default)]
            message: String,
            #[serde(default)]
            request_id: String,
        }
        match serde_json::from_slice::<Problem>(&bytes) {
            Ok(problem) => Err(AlibabaError::Api {
                action,
                status,
                code: problem.code,
                message: problem.message,
                request_id: problem.request_id,
            }),
            Err(_) => Err(unexpected("not an API error document".into())),
        }
    }
}

fn split_ids(ids: &str) -> Vec<String> {
    ids.split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect()
}
