//! Akamai Fast Purge v3: invalidate or delete by URL, cache tag or CP code.

use std::fmt;
use std::sync::Arc;

use futures_util::StreamExt;

pub use super::InvalidObject;
use super::call::{self, NoAnswer, Retry};
use super::{Backoff, Layer, Outcome, Progress, Refusal, Target, TokenBucket};
use edgecache::edgegrid::{Credentials, EdgeGridAuth};

mod report;
mod rules;

pub use self::report::{Accepted, BatchReport, Failure, PurgeReport};
use self::rules::rate_limit_wait;
pub use self::rules::{MAX_TAG_CHARS, check_tag};

/// Bodies stay under Akamai's 50,000-byte limit (413 above it).
const MAX_BODY: usize = 49_000;

pub use super::ObjectKind;

/// What to do with cached copies.
///
/// `Invalidate` is the default, as Akamai's docs advise: an invalidated
/// copy is revalidated with `If-Modified-Since`/`If-None-Match`, so an
/// unchanged object costs the origin a `304`, and if the origin is down the
/// edge can still serve the stale copy. `Delete` removes the copy outright:
/// every edge then fetches the whole object, and has nothing to serve while
/// the origin is unreachable. Delete when content must never be served
/// again (a legal takedown, leaked data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Mark stale: the edge revalidates with the origin (the default).
    #[default]
    Invalidate,
    /// Remove: the edge fetches anew (the reference Python client's default).
    Delete,
}

/// Which Akamai network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// The staging network.
    Staging,
    /// The production network (the default).
    #[default]
    Production,
}

/// Client-side limits, as Akamai documents them per account: a burst size
/// and a sustained rate for requests and for objects of each kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Requests: burst, per second.
    pub requests: (u32, f64),
    /// URL objects: burst, per second.
    pub urls: (u32, f64),
    /// CP code objects: burst, per second.
    pub cpcodes: (u32, f64),
    /// Tag objects: burst, per second.
    pub tags: (u32, f64),
}

impl Default for RateLimits {
    /// Akamai's: 100 requests burst, 50/s; 10,000 URLs burst, 12,000/min;
    /// 300 CP codes burst, 30/min; 5,000 tags burst, 500/min.
    fn default() -> Self {
        Self {
            requests: (100, 50.0),
            urls: (10_000, 12_000.0 / 60.0),
            cpcodes: (300, 30.0 / 60.0),
            tags: (5_000, 500.0 / 60.0),
        }
    }
}

/// Why a purge did not start.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// Some objects are invalid: nothing was sent.
    #[error("{} invalid object(s), nothing sent; first: {:?}: {}", .0.len(), .0[0].object, .0[0].reason)]
    Invalid(Vec<InvalidObject>),
}

/// Called as each request completes.
pub type BatchProgress = Arc<dyn Fn(&BatchReport) + Send + Sync>;

/// Purges objects from Akamai with Fast Purge v3: packs them into requests
/// under the body limit, keeps to the documented rate limits on the client
/// side, runs up to 10 requests at once, retries `429`, `5xx` and transport
/// errors (honouring `Retry-After`), never retries other errors, and reports
/// every object.
///
/// ```no_run
/// use edgecache::edgegrid::Credentials;
/// use edgecache_purge::akamai::FastPurgeClient;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let purge = FastPurgeClient::new(Credentials::load(None, None)?)?;
/// let report = purge.purge_urls(["https://www.example.com/a", "https://www.example.com/b"]).await?;
/// for (object, failure) in report.failed() {
///     eprintln!("{object}: {}", failure.detail);
/// }
/// report.wait().await; // until Akamai's estimate has passed
/// # Ok(()) }
/// ```
pub struct FastPurgeClient {
    client: reqwest_middleware::ClientWithMiddleware,
    host: String,
    scheme: String,
    action: Action,
    network: Network,
    concurrency: usize,
    backoff: Backoff,
    max_attempts: u32,
    requests: TokenBucket,
    urls: TokenBucket,
    cpcodes: TokenBucket,
    tags: TokenBucket,
    progress: Option<BatchProgress>,
}

impl fmt::Debug for FastPurgeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastPurgeClient")
            .field("host", &self.host)
            .field("action", &self.action)
            .field("network", &self.network)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl FastPurgeClient {
    /// A client for these credentials: `https`, production, `invalidate`.
    pub fn new(credentials: Credentials) -> Result<Self, reqwest::Error> {
        let host = credentials.host().to_owned();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let client = reqwest_middleware::ClientBuilder::new(http)
            .with(EdgeGridAuth::new(credentials))
            .build();
        Ok(Self {
            client,
            host,
            scheme: "https".into(),
            action: Action::default(),
            network: Network::default(),
            concurrency: 10,
            backoff: Backoff::default(),
            max_attempts: 10,
            progress: None,
            requests: TokenBucket::new(1, 1.0),
            urls: TokenBucket::new(1, 1.0),
            cpcodes: TokenBucket::new(1, 1.0),
            tags: TokenBucket::new(1, 1.0),
        }
        .rate_limits(RateLimits::default()))
    }

    /// `http` to talk to a local stand-in (the port goes in the host).
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = scheme.into();
        self
    }

    /// Invalidate or delete. Default: invalidate ([`Action`] says why).
    pub fn action(mut self, action: Action) -> Self {
        self.action = action;
        self
    }

    /// Staging or production. Default: production.
    pub fn network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// Requests in flight at once. Default: 10.
    pub fn concurrency(mut self, requests: usize) -> Self {
        self.concurrency = requests.max(1);
        self
    }

    /// The client-side rate limits. Default: Akamai's documented ones.
    ///
    /// The client refills at 95% of each sustained rate: Akamai counts a
    /// request when it arrives, and arrivals bunch up by however much the
    /// network's delay varies, so a client spending exactly at the limit
    /// would draw `429`s.
    pub fn rate_limits(mut self, limits: RateLimits) -> Self {
        const MARGIN: f64 = 0.95;
        let bucket = |(burst, per_second): (u32, f64)| TokenBucket::new(burst, per_second * MARGIN);
        self.requests = bucket(limits.requests);
        self.urls = bucket(limits.urls);
        self.cpcodes = bucket(limits.cpcodes);
        self.tags = bucket(limits.tags);
        self
    }

    /// Delays between retries. Default: 0.5 s doubling to 30 s, with jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Attempts per request before giving up. Default: 10.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Called as each request completes (for progress bars).
    pub fn on_progress(mut self, progress: impl Fn(&BatchReport) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// Purges URLs.
    pub async fn purge_urls<S: Into<String>>(
        &self,
        urls: impl IntoIterator<Item = S>,
    ) -> Result<PurgeReport, PurgeError> {
        self.purge(ObjectKind::Url, urls.into_iter().map(Into::into).collect())
            .await
    }

    /// Purges cache tags.
    pub async fn purge_tags<S: Into<String>>(
        &self,
        tags: impl IntoIterator<Item = S>,
    ) -> Result<PurgeReport, PurgeError> {
        self.purge(ObjectKind::Tag, tags.into_iter().map(Into::into).collect())
            .await
    }

    /// Purges CP codes.
    pub async fn purge_cpcodes(&self, codes: impl IntoIterator<Item = u64>) -> Result<PurgeReport, PurgeError> {
        self.purge(
            ObjectKind::CpCode,
            codes.into_iter().map(|code| code.to_string()).collect(),
        )
        .await
    }

    /// Purges objects of one kind. Every object is checked first; if any is
    /// invalid, nothing is sent.
    pub async fn purge(&self, kind: ObjectKind, objects: Vec<String>) -> Result<PurgeReport, PurgeError> {
        self.purge_within(kind, objects, &Progress::none()).await
    }

    /// [`purge`](Self::purge), as part of a run: progress reported, nothing
    /// more sent once it is stopped.
    async fn purge_within(
        &self,
        kind: ObjectKind,
        objects: Vec<String>,
        run: &Progress,
    ) -> Result<PurgeReport, PurgeError> {
        let invalid = check_objects(kind, &objects);
        if !invalid.is_empty() {
            return Err(PurgeError::Invalid(invalid));
        }
        // URLs go as the CDN cached them: encoded where needed.
        let objects = match kind {
            ObjectKind::Url => objects
                .into_iter()
                .map(|object| crate::check_url(&object).map_or(object, String::from))
                .collect(),
            _ => objects,
        };
        let batches = pack(kind, objects, self.bucket(kind).capacity() as usize);
        let batches = futures_util::stream::iter(batches)
            .map(|objects| self.send(kind, objects, run))
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        Ok(PurgeReport { kind, batches })
    }

    fn bucket(&self, kind: ObjectKind) -> &TokenBucket {
        match kind {
            ObjectKind::Tag => &self.tags,
            ObjectKind::CpCode => &self.cpcodes,
            // Only URLs are left once `check_objects` has passed.
            _ => &self.urls,
        }
    }

    async fn send(&self, kind: ObjectKind, objects: Vec<String>, run: &Progress) -> BatchReport {
        let outcome = self.attempt(kind, &objects, run).await;
        let report = BatchReport { objects, outcome };
        if let Some(progress) = &self.progress {
            progress(&report);
        }
        run.settled(&report.objects, &report.to_outcome());
        run.finished(
            report.objects.len(),
            if report.outcome.is_ok() {
                0
            } else {
                report.objects.len()
            },
        );
        report
    }

    async fn attempt(&self, kind: ObjectKind, objects: &[String], run: &Progress) -> Result<Accepted, Failure> {
        let action = match self.action {
            Action::Invalidate => "invalidate",
            Action::Delete => "delete",
        };
        let network = match self.network {
            Network::Staging => "staging",
            Network::Production => "production",
        };
        let url = format!("{}://{}/ccu/v3/{action}/{kind}/{network}", self.scheme, self.host);
        let body = body(kind, objects);
        let tokens = u32::try_from(objects.len()).unwrap_or(u32::MAX);
        let request = || {
            self.client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
        };
        let retry = Retry {
            backoff: self.backoff,
            max_attempts: self.max_attempts,
            wait_hint: Some(rate_limit_wait),
        };
        let buckets = [(&self.requests, 1), (self.bucket(kind), tokens)];
        let answer = match call::call(request, objects, &buckets, retry, run).await {
            Ok(answer) => answer,
            Err(NoAnswer::NotSent) => {
                return Err(Failure {
                    status: None,
                    detail: "not sent: the run was stopped first".into(),
                    support_id: None,
                    attempts: 0,
                });
            }
            Err(NoAnswer::Transport(detail, attempts)) => {
                return Err(Failure {
                    status: None,
                    detail,
                    support_id: None,
                    attempts,
                });
            }
        };
        if answer.status == 201 {
            return serde_json::from_slice::<Accepted>(&answer.body).map_err(|error| Failure {
                status: Some(201),
                detail: format!("accepted, but the answer did not parse: {error}"),
                support_id: None,
                attempts: answer.attempts,
            });
        }
        let problem = serde_json::from_slice::<serde_json::Value>(&answer.body).unwrap_or_default();
        let text = |field: &str| problem.get(field).and_then(|value| value.as_str()).map(str::to_owned);
        let detail = [text("title"), text("detail")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        Err(Failure {
            status: Some(answer.status),
            detail: if detail.is_empty() {
                http::StatusCode::from_u16(answer.status)
                    .map_or_else(|_| answer.status.to_string(), |status| status.to_string())
            } else {
                detail
            },
            support_id: text("supportId"),
            attempts: answer.attempts,
        })
    }
}

/// Akamai's edge: URLs, tags and CP codes, deleted or invalidated as the
/// client is configured. A prefix is refused with the reason: Fast Purge has
/// none.
#[async_trait::async_trait]
impl Target for FastPurgeClient {
    fn name(&self) -> String {
        "akamai".into()
    }

    fn layer(&self) -> Layer {
        Layer::Edge
    }

    fn takes(&self, kind: ObjectKind) -> Result<(), Refusal> {
        takes(kind)
    }

    fn check(&self, kind: ObjectKind, object: &str) -> Result<(), Refusal> {
        match kind {
            ObjectKind::Tag => check_tag(object).map_err(Refusal::Invalid),
            _ => Ok(()),
        }
    }

    async fn purge(&self, kind: ObjectKind, objects: &[String], progress: &Progress) -> Vec<Outcome> {
        match self.purge_within(kind, objects.to_vec(), progress).await {
            Ok(report) => crate::report::in_order(objects, &report.outcomes(), "Akamai's answer did not cover it"),
            Err(PurgeError::Invalid(invalid)) => {
                let reasons: std::collections::HashMap<&str, &str> = invalid
                    .iter()
                    .map(|invalid| (invalid.object.as_str(), invalid.reason.as_str()))
                    .collect();
                objects
                    .iter()
                    .map(|object| match reasons.get(object.as_str()) {
                        Some(reason) => Outcome::failed(format!("refused before sending: {reason}"), false),
                        None => Outcome::not_sent("another object in the list was invalid"),
                    })
                    .collect()
            }
        }
    }

    /// Sends nothing: Fast Purge has no read-only call. Says which API host
    /// and network the credentials are for.
    /// Asks the edge in front of the URL, as Akamai's edges answer.
    async fn verify(&self, url: &str, since: std::time::SystemTime, edge: &crate::EdgeProbe) -> crate::Verdict {
        edge.check(url, since, crate::verify::Vendor::Akamai).await
    }

    async fn probe(&self) -> Result<String, String> {
        Ok(format!(
            "{} ({:?}, {:?}); Fast Purge has no read-only call to check credentials with",
            self.host, self.network, self.action
        ))
    }
}

/// `{"objects":[…]}`, CP codes as JSON numbers.
fn body(kind: ObjectKind, objects: &[String]) -> Vec<u8> {
    let objects: Vec<serde_json::Value> = objects
        .iter()
        .map(|object| match kind {
            ObjectKind::CpCode => object.parse::<u64>().map(serde_json::Value::from).unwrap_or_default(),
            _ => serde_json::Value::from(object.as_str()),
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "objects": objects })).unwrap_or_default()
}

/// Packs objects greedily into batches whose bodies stay under the limit
/// (JSON escaping counted) and whose size fits the rate-limit burst.
fn pack(kind: ObjectKind, objects: Vec<String>, max_objects: usize) -> Vec<Vec<String>> {
    const WRAPPER: usize = r#"{"objects":[]}"#.len();
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut size = WRAPPER;
    for object in objects {
        let encoded = match kind {
            ObjectKind::CpCode => object.len(),
            _ => serde_json::to_string(&object).map_or(object.len() + 2, |json| json.len()),
        };
        let added = encoded + usize::from(!batch.is_empty());
        if !batch.is_empty() && (size + added > MAX_BODY || batch.len() >= max_objects) {
            batches.push(std::mem::take(&mut batch));
            size = WRAPPER;
        }
        size += encoded + usize::from(!batch.is_empty());
        batch.push(object);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Checks objects as [`FastPurgeClient::purge`] would, without sending
/// anything: what is wrong with each invalid one (empty when all are fine).
/// The rules are [`check_object`](crate::check_object)'s, and
/// Akamai's own for tags ([`check_tag`]); Fast Purge takes URLs, tags and
/// CP codes only.
pub fn check_objects(kind: ObjectKind, objects: &[String]) -> Vec<InvalidObject> {
    crate::check_each(objects, "nothing to purge", |object| {
        takes(kind).map_err(|refusal| refusal.to_string())?;
        let object = crate::check_object(kind, object)?;
        if kind == ObjectKind::Tag {
            check_tag(&object)?;
        }
        Ok(())
    })
    .err()
    .unwrap_or_default()
}

/// Whether Fast Purge has a purge by `kind`; why not.
fn takes(kind: ObjectKind) -> Result<(), Refusal> {
    match kind {
        ObjectKind::Url | ObjectKind::Tag | ObjectKind::CpCode => Ok(()),
        ObjectKind::Prefix => Err("Fast Purge has no prefix purge: purge the URLs, or a tag they carry".into()),
        ObjectKind::Regex => Err("Fast Purge has no pattern purge: purge the URLs, or a tag they carry".into()),
        ObjectKind::Everything => Err("Fast Purge has no purge-everything: purge the CP codes that serve it".into()),
        ObjectKind::Host => Err("Fast Purge has no purge by host: purge the CP codes that serve it".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_pack_greedily_under_the_body_limit_with_escaping_counted() {
        let urls: Vec<String> = (0..5000)
            .map(|index| format!("https://example.com/\"quoted\"/{index}"))
            .collect();
        let batches = pack(ObjectKind::Url, urls.clone(), 10_000);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), urls.len());
        for batch in &batches {
            assert!(body(ObjectKind::Url, batch).len() <= MAX_BODY);
        }
        // Greedy: only the last batch may be short of the limit by more than one object.
        for batch in &batches[..batches.len() - 1] {
            assert!(body(ObjectKind::Url, batch).len() > MAX_BODY - 50);
        }
        assert_eq!(
            pack(ObjectKind::CpCode, (0..1000).map(|n| n.to_string()).collect(), 300).len(),
            4
        );
        assert_eq!(body(ObjectKind::CpCode, &["12345".into()]), br#"{"objects":[12345]}"#);
    }
}
