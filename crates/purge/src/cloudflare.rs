//! Cloudflare cache purge: by URL, cache tag, prefix, or everything in a zone.
//!
//! The API: <https://developers.cloudflare.com/api/resources/cache/methods/purge/>
//! (`POST /client/v4/zones/{zone_id}/purge_cache`, a bearer token, exactly
//! one of `files`, `tags`, `hosts`, `prefixes` or `purge_everything`).
//! The limits: <https://developers.cloudflare.com/cache/how-to/purge-cache/#availability-and-limits>.
//! Two kinds, per account, by plan:
//!
//! - single-file purge (`files`) counts URLs a second (a moving average):
//!   Free 800, Pro 1,500, Business 1,500, Enterprise 3,000; 100 URLs a
//!   request (500 on Enterprise);
//! - hostname, tag, prefix and purge-everything count requests in a token
//!   bucket: Free 5 a minute (bucket 25), Pro 5 a second (25), Business 10 a
//!   second (50), Enterprise 50 a second (500); 100 operations a request.
//!
//! Each kind waits on its own bucket: a URL purge never spends the request
//! bucket, which on the Free plan would hold 10,000 URLs to 5 requests a minute.

use std::fmt;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Deserialize;

use super::call::{self, NoAnswer, Retry};
use super::{Backoff, Layer, ObjectKind, Outcome, Progress, Refusal, Target, TokenBucket};

/// The API's public base.
pub const DEFAULT_API_BASE: &str = "https://api.cloudflare.com";

/// Path separators in one prefix, at most (scheme left out).
const MAX_PREFIX_SEPARATORS: usize = 31;

/// A Cloudflare plan: it sets the purge rates and the request size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    /// 800 URLs a second; other purges 5 requests a minute, bucket of 25
    /// (the default: the slowest).
    #[default]
    Free,
    /// 1,500 URLs a second; other purges 5 a second, bucket of 25.
    Pro,
    /// 1,500 URLs a second; other purges 10 a second, bucket of 50.
    Business,
    /// 3,000 URLs a second, 500 a request; other purges 50 a second,
    /// bucket of 500.
    Enterprise,
}

impl Plan {
    /// Hostname, tag, prefix and purge-everything requests: (bucket size,
    /// requests per second).
    fn requests(self) -> (u32, f64) {
        match self {
            Plan::Free => (25, 5.0 / 60.0),
            Plan::Pro => (25, 5.0),
            Plan::Business => (50, 10.0),
            Plan::Enterprise => (500, 50.0),
        }
    }

    /// Single-file purge: URLs a second. A moving average, so the bucket
    /// holds one second's worth.
    fn urls_per_second(self) -> u32 {
        match self {
            Plan::Free => 800,
            Plan::Pro | Plan::Business => 1_500,
            Plan::Enterprise => 3_000,
        }
    }

    /// Operations in one request: 100, URLs 500 on Enterprise, and
    /// prefixes 30 (the purge-by-prefix page's own limit).
    fn per_request(self, kind: ObjectKind) -> usize {
        match kind {
            ObjectKind::Url if self == Plan::Enterprise => 500,
            ObjectKind::Prefix => 30,
            _ => 100,
        }
    }
}

/// Purges a Cloudflare zone's cache. The token is never logged nor shown.
///
/// ```no_run
/// use edgecache_purge::cloudflare::{CloudflarePurge, Plan};
/// use edgecache_purge::{Objects, Purger};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let cloudflare = CloudflarePurge::new("023e105f4ecef8ad9ca31a8372d0c353", std::env::var("CLOUDFLARE_API_TOKEN")?)?
///     .plan(Plan::Pro);
/// let report = Purger::builder().target(cloudflare).build()
///     .purge(Objects::tags(["product-42"])).await?;
/// assert!(report.is_success());
/// # Ok(()) }
/// ```
pub struct CloudflarePurge {
    http: reqwest::Client,
    zone: String,
    token: String,
    api_base: String,
    plan: Plan,
    requests: TokenBucket,
    urls: TokenBucket,
    retry: Retry,
}

impl fmt::Debug for CloudflarePurge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudflarePurge")
            .field("zone", &self.zone)
            .field("plan", &self.plan)
            .field("api_base", &self.api_base)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl CloudflarePurge {
    /// A client for one zone, on the Free plan's limits until told the plan.
    pub fn new(zone: impl Into<String>, token: impl Into<String>) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: edgecache_base::net::http_client()?,
            zone: zone.into(),
            token: token.into(),
            api_base: DEFAULT_API_BASE.into(),
            plan: Plan::Free,
            requests: TokenBucket::new(1, 1.0),
            urls: TokenBucket::new(1, 1.0),
            retry: Retry::default(),
        }
        .plan(Plan::Free))
    }

    /// The account's plan: its purge rates (95 % of each, as for Akamai)
    /// and request size.
    pub fn plan(mut self, plan: Plan) -> Self {
        let (burst, per_second) = plan.requests();
        let urls = plan.urls_per_second();
        self.plan = plan;
        self.requests = TokenBucket::new(burst, per_second * 0.95);
        self.urls = TokenBucket::new(urls, f64::from(urls) * 0.95);
        self
    }

    /// Another API base, such as a stand-in on `http://127.0.0.1:…`.
    pub fn api_base(mut self, base: impl Into<String>) -> Self {
        self.api_base = base.into().trim_end_matches('/').to_owned();
        self
    }

    /// Delays between retries. Default: 0.5 s doubling to 30 s, with jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.retry.backoff = backoff;
        self
    }

    fn body(kind: ObjectKind, objects: &[String]) -> serde_json::Value {
        match kind {
            ObjectKind::Tag => serde_json::json!({ "tags": objects }),
            // Prefixes are written without their scheme.
            ObjectKind::Prefix => {
                let prefixes: Vec<&str> = objects
                    .iter()
                    .map(|prefix| prefix.split_once("://").map_or(prefix.as_str(), |(_, rest)| rest))
                    .collect();
                serde_json::json!({ "prefixes": prefixes })
            }
            ObjectKind::Host => serde_json::json!({ "hosts": objects }),
            ObjectKind::Everything => serde_json::json!({ "purge_everything": true }),
            _ => serde_json::json!({ "files": objects }),
        }
    }

    async fn send(&self, kind: ObjectKind, objects: &[String], run: &Progress) -> Outcome {
        let url = format!("{}/client/v4/zones/{}/purge_cache", self.api_base, self.zone);
        let body = serde_json::to_vec(&Self::body(kind, objects)).unwrap_or_default();
        let request = || {
            self.http
                .post(&url)
                .bearer_auth(&self.token)
                .header("content-type", "application/json")
                .body(body.clone())
        };
        // Each kind of purge waits on the bucket Cloudflare counts it in.
        let bucket = match kind {
            ObjectKind::Url => (&self.urls, u32::try_from(objects.len()).unwrap_or(u32::MAX)),
            _ => (&self.requests, 1),
        };
        match call::call(request, objects, &[bucket], self.retry, run).await {
            Ok(answer) => {
                let parsed: Answer = serde_json::from_slice(&answer.body).unwrap_or_default();
                match (answer.status, parsed.success) {
                    (200, true) => {
                        let outcome = Outcome::done("purged");
                        match parsed.result.and_then(|result| result.id) {
                            Some(id) => outcome.with_id(id),
                            None => outcome,
                        }
                    }
                    (status, _) => {
                        Outcome::failed(format!("{status}: {}", parsed.describe_errors()), answer.is_retryable())
                    }
                }
            }
            Err(NoAnswer::NotSent) => Outcome::not_sent("the run was stopped first"),
            Err(NoAnswer::Transport(error, _)) => Outcome::failed(error, true),
        }
    }
}

/// Cloudflare's answer envelope.
#[derive(Debug, Default, Deserialize)]
struct Answer {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<ApiError>,
    result: Option<Created>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct Created {
    id: Option<String>,
}

impl Answer {
    fn describe_errors(&self) -> String {
        if self.errors.is_empty() {
            return "no error given".into();
        }
        self.errors
            .iter()
            .map(|error| format!("{} {}", error.code, error.message))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[async_trait]
impl Target for CloudflarePurge {
    fn name(&self) -> String {
        "cloudflare".into()
    }

    fn layer(&self) -> Layer {
        Layer::Edge
    }

    fn takes(&self, kind: ObjectKind) -> Result<(), Refusal> {
        match kind {
            ObjectKind::Url | ObjectKind::Tag | ObjectKind::Prefix | ObjectKind::Host | ObjectKind::Everything => {
                Ok(())
            }
            ObjectKind::CpCode => Err("CP codes are Akamai's".into()),
            ObjectKind::Regex => {
                Err("Cloudflare purges by URL, tag, prefix, host or everything, not by pattern".into())
            }
        }
    }

    /// Cloudflare refuses a whole request for one bad prefix: one with a
    /// query string, or more than 31 path separators. Such a prefix is
    /// refused here, before anything is sent.
    fn check(&self, kind: ObjectKind, object: &str) -> Result<(), Refusal> {
        if kind != ObjectKind::Prefix {
            return Ok(());
        }
        if object.contains('?') {
            return Err(Refusal::Invalid(
                "a Cloudflare prefix has no query string: drop what follows `?`".into(),
            ));
        }
        let path = object.split_once("://").map_or(object, |(_, rest)| rest);
        let separators = path.matches('/').count();
        if separators > MAX_PREFIX_SEPARATORS {
            return Err(Refusal::Invalid(format!(
                "a Cloudflare prefix has at most {MAX_PREFIX_SEPARATORS} `/`; this one has {separators}"
            )));
        }
        Ok(())
    }

    async fn purge(&self, kind: ObjectKind, objects: &[String], progress: &Progress) -> Vec<Outcome> {
        let chunks: Vec<&[String]> = objects.chunks(self.plan.per_request(kind)).collect();
        let chunks = &chunks;
        // A few at a time: the bucket, not concurrency, sets the pace.
        let outcomes: Vec<(usize, Outcome)> = futures_util::stream::iter(0..chunks.len())
            .map(|at| async move {
                let chunk = chunks[at];
                let outcome = self.send(kind, chunk, progress).await;
                progress.settled(chunk, &outcome);
                let failed = if outcome.status.is_success() { 0 } else { chunk.len() };
                progress.finished(chunk.len(), failed);
                (chunk.len(), outcome)
            })
            .buffered(4)
            .collect()
            .await;
        outcomes
            .into_iter()
            .flat_map(|(count, outcome)| std::iter::repeat_n(outcome, count))
            .collect()
    }

    /// Asks the edge in front of the URL, as Cloudflare's edges answer.
    async fn verify(&self, url: &str, since: std::time::SystemTime, edge: &crate::EdgeProbe) -> crate::Verdict {
        edge.check(url, since, crate::verify::Vendor::Cloudflare).await
    }

    async fn probe(&self) -> Result<String, String> {
        let url = format!("{}/client/v4/zones/{}", self.api_base, self.zone);
        let answer = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|error| edgecache_base::net::error_chain(&error))?;
        let status = answer.status().as_u16();
        let body = answer.bytes().await.unwrap_or_default();
        let parsed: Answer = serde_json::from_slice(&body).unwrap_or_default();
        if status == 200 && parsed.success {
            Ok(format!("zone {}, {:?} plan limits", self.zone, self.plan))
        } else {
            Err(format!("{status}: {}", parsed.describe_errors()))
        }
    }
}
