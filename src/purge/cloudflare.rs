//! Cloudflare cache purge: by URL, cache tag, prefix, or everything in a zone.
//!
//! The API: <https://developers.cloudflare.com/api/resources/cache/methods/purge/>
//! (`POST /client/v4/zones/{zone_id}/purge_cache`, a bearer token, exactly
//! one of `files`, `tags`, `hosts`, `prefixes` or `purge_everything`).
//! The limits: <https://developers.cloudflare.com/cache/how-to/purge-cache/#availability-and-limits>
//! (at most 100 operations a request, 500 URLs on Enterprise; a token
//! bucket per account that depends on the plan).

use std::fmt;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Deserialize;

use super::call::{self, NoAnswer, Retry};
use super::{Backoff, Layer, ObjectKind, Outcome, Progress, Target, TokenBucket};

/// The API's public base.
pub const DEFAULT_API_BASE: &str = "https://api.cloudflare.com";

/// A Cloudflare plan: it sets the purge rate and the request size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    /// 5 purge requests a minute, bucket of 25 (the default: the slowest).
    #[default]
    Free,
    /// 5 a second, bucket of 25.
    Pro,
    /// 10 a second, bucket of 50.
    Business,
    /// 50 a second, bucket of 500; 500 URLs a request.
    Enterprise,
}

impl Plan {
    /// (bucket size, requests per second).
    fn rate(self) -> (u32, f64) {
        match self {
            Plan::Free => (25, 5.0 / 60.0),
            Plan::Pro => (25, 5.0),
            Plan::Business => (50, 10.0),
            Plan::Enterprise => (500, 50.0),
        }
    }

    /// Operations in one request.
    fn per_request(self, kind: ObjectKind) -> usize {
        if self == Plan::Enterprise && kind == ObjectKind::Url {
            500
        } else {
            100
        }
    }
}

/// Purges a Cloudflare zone's cache. The token is never logged nor shown.
///
/// ```no_run
/// use edgecache::purge::cloudflare::{CloudflarePurge, Plan};
/// use edgecache::purge::{Objects, Purger};
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
            http: crate::net::http_client()?,
            zone: zone.into(),
            token: token.into(),
            api_base: DEFAULT_API_BASE.into(),
            plan: Plan::Free,
            requests: TokenBucket::new(1, 1.0),
            retry: Retry::default(),
        }
        .plan(Plan::Free))
    }

    /// The account's plan: its purge rate (95 % of it, as for Akamai) and
    /// request size.
    pub fn plan(mut self, plan: Plan) -> Self {
        let (burst, per_second) = plan.rate();
        self.plan = plan;
        self.requests = TokenBucket::new(burst, per_second * 0.95);
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
        match call::call(request, &[(&self.requests, 1)], self.retry, run).await {
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

    fn takes(&self, kind: ObjectKind) -> Result<(), String> {
        match kind {
            ObjectKind::Url | ObjectKind::Tag | ObjectKind::Prefix | ObjectKind::Everything => Ok(()),
            ObjectKind::CpCode => Err("CP codes are Akamai's".into()),
            ObjectKind::Regex => Err("Cloudflare purges by URL, tag, prefix or everything, not by pattern".into()),
        }
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

    async fn probe(&self) -> Result<String, String> {
        let url = format!("{}/client/v4/zones/{}", self.api_base, self.zone);
        let answer = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|error| crate::net::error_chain(&error))?;
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
