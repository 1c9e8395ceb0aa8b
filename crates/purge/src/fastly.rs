//! Fastly purge: by URL, by surrogate key, or everything in a service;
//! soft (mark stale) when asked.
//!
//! The API: <https://www.fastly.com/documentation/reference/api/purging/>
//! (`POST /purge/{host}/{path}` for a URL, with the URL's query as the
//! call's own query string; `POST /service/{service_id}/purge` with up to 256
//! `surrogate_keys` of at most 1,024 bytes each;
//! `POST /service/{service_id}/purge_all`; `Fastly-Key` authenticates,
//! `Fastly-Soft-Purge: 1` marks stale instead of removing, and `purge_all`
//! cannot be soft).

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::call::{self, NoAnswer, Retry};
use super::{Backoff, Layer, ObjectKind, Outcome, Progress, Refusal, Target};

/// The API's public base.
pub const DEFAULT_API_BASE: &str = "https://api.fastly.com";

/// Keys in one batch purge.
const KEYS_PER_REQUEST: usize = 256;

/// The longest surrogate key Fastly takes, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Purges a Fastly service. The token is never logged nor shown.
///
/// ```no_run
/// use edgecache_purge::fastly::FastlyPurge;
/// use edgecache_purge::{Objects, Purger};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let fastly = FastlyPurge::new("SU1Z0isxPaozGVKXdv0eY", std::env::var("FASTLY_API_TOKEN")?)?.soft(true);
/// let report = Purger::builder().target(fastly).build()
///     .purge(Objects::tags(["product-42"])).await?;
/// assert!(report.is_success());
/// # Ok(()) }
/// ```
pub struct FastlyPurge {
    http: reqwest::Client,
    service: String,
    token: String,
    api_base: String,
    soft: bool,
    concurrency: usize,
    retry: Retry,
}

impl fmt::Debug for FastlyPurge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastlyPurge")
            .field("service", &self.service)
            .field("soft", &self.soft)
            .field("api_base", &self.api_base)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl FastlyPurge {
    /// A client for one service: hard purges, 8 requests at once.
    pub fn new(service: impl Into<String>, token: impl Into<String>) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: edgecache_base::net::http_client()?,
            service: service.into(),
            token: token.into(),
            api_base: DEFAULT_API_BASE.into(),
            soft: false,
            concurrency: 8,
            retry: Retry::default(),
        })
    }

    /// Soft purges: content is marked stale (and revalidated) instead of
    /// removed. Default: off.
    pub fn soft(mut self, soft: bool) -> Self {
        self.soft = soft;
        self
    }

    /// Another API base, such as a stand-in on `http://127.0.0.1:…`.
    pub fn api_base(mut self, base: impl Into<String>) -> Self {
        self.api_base = base.into().trim_end_matches('/').to_owned();
        self
    }

    /// Requests in flight at once (URLs go one a request). Default: 8.
    pub fn concurrency(mut self, requests: usize) -> Self {
        self.concurrency = requests.max(1);
        self
    }

    /// Delays between retries. Default: 0.5 s doubling to 30 s, with jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.retry.backoff = backoff;
        self
    }

    fn post(&self, url: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .post(url)
            .header("fastly-key", &self.token)
            .header("accept", "application/json");
        if self.soft {
            request.header("fastly-soft-purge", "1")
        } else {
            request
        }
    }

    /// One request, and its answer as JSON, or the outcome of its failure.
    async fn send(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder + Send + Sync,
        carrying: &[String],
        run: &Progress,
    ) -> Result<serde_json::Value, Outcome> {
        match call::call(request, carrying, &[], self.retry, run).await {
            Ok(answer) if answer.status == 200 => Ok(serde_json::from_slice(&answer.body).unwrap_or_default()),
            Ok(answer) => {
                let problem: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
                let text = |field: &str| problem.get(field).and_then(|value| value.as_str()).map(str::to_owned);
                let detail = [text("msg"), text("detail")].into_iter().flatten().collect::<Vec<_>>();
                let detail = if detail.is_empty() {
                    "no detail given".to_owned()
                } else {
                    detail.join(": ")
                };
                Err(Outcome::failed(
                    format!("{}: {detail}", answer.status),
                    answer.is_retryable(),
                ))
            }
            Err(NoAnswer::NotSent) => Err(Outcome::not_sent("the run was stopped first")),
            Err(NoAnswer::Transport(error, _)) => Err(Outcome::failed(error, true)),
        }
    }

    async fn purge_url(&self, url: &str, run: &Progress) -> Outcome {
        // `POST /purge/{host}/{path}`: the URL without its scheme. Its query
        // goes as the call's own query string, byte for byte, as Fastly's
        // clients send it: escaped into the path (`%3F`), it names another
        // object, and Fastly answers 200 for a purge of nothing.
        let target = url.split_once("://").map_or(url, |(_, rest)| rest);
        let endpoint = format!("{}/purge/{target}", self.api_base);
        match self.send(|| self.post(&endpoint), &[url.to_owned()], run).await {
            Ok(answer) => {
                let outcome = Outcome::done(if self.soft { "soft-purged" } else { "purged" });
                match answer.get("id").and_then(|id| id.as_str()) {
                    Some(id) => outcome.with_id(id),
                    None => outcome,
                }
            }
            Err(outcome) => outcome,
        }
    }

    async fn purge_keys(&self, keys: &[String], run: &Progress) -> Vec<Outcome> {
        let endpoint = format!("{}/service/{}/purge", self.api_base, self.service);
        let body = serde_json::to_vec(&serde_json::json!({ "surrogate_keys": keys })).unwrap_or_default();
        let request = || {
            self.post(&endpoint)
                .header("content-type", "application/json")
                .body(body.clone())
        };
        match self.send(request, keys, run).await {
            Ok(answer) => {
                // The answer maps each key to its purge id.
                let ids: HashMap<String, String> = serde_json::from_value(answer).unwrap_or_default();
                keys.iter()
                    .map(|key| match ids.get(key) {
                        Some(id) => Outcome::done(if self.soft { "soft-purged" } else { "purged" }).with_id(id),
                        None => Outcome::failed("Fastly's answer did not name this key", true),
                    })
                    .collect()
            }
            Err(outcome) => vec![outcome; keys.len()],
        }
    }

    async fn purge_all(&self, run: &Progress) -> Outcome {
        let endpoint = format!("{}/service/{}/purge_all", self.api_base, self.service);
        match self
            .send(|| self.post(&endpoint), &[crate::EVERYTHING.to_owned()], run)
            .await
        {
            Ok(_) => Outcome::done("purged everything"),
            Err(outcome) => outcome,
        }
    }
}

#[async_trait]
impl Target for FastlyPurge {
    fn name(&self) -> String {
        "fastly".into()
    }

    fn layer(&self) -> Layer {
        Layer::Edge
    }

    fn takes(&self, kind: ObjectKind) -> Result<(), Refusal> {
        match kind {
            ObjectKind::Url | ObjectKind::Tag => Ok(()),
            ObjectKind::Everything if self.soft => Err("Fastly's purge_all cannot be soft: drop --soft".into()),
            ObjectKind::Everything => Ok(()),
            ObjectKind::Prefix => {
                Err("Fastly has no prefix purge: purge the URLs, or a surrogate key they carry".into())
            }
            ObjectKind::CpCode => Err("CP codes are Akamai's".into()),
            ObjectKind::Host => {
                Err("Fastly has no purge by host: purge a surrogate key the host's responses carry".into())
            }
            ObjectKind::Regex => Err("Fastly purges by URL, surrogate key or everything, not by pattern".into()),
        }
    }

    fn check(&self, kind: ObjectKind, object: &str) -> Result<(), Refusal> {
        if kind == ObjectKind::Tag && object.len() > MAX_KEY_BYTES {
            return Err(Refusal::Invalid(format!(
                "a Fastly surrogate key is at most {MAX_KEY_BYTES} bytes; this one has {}",
                object.len()
            )));
        }
        Ok(())
    }

    async fn purge(&self, kind: ObjectKind, objects: &[String], progress: &Progress) -> Vec<Outcome> {
        let batches: Vec<&[String]> = match kind {
            ObjectKind::Tag => objects.chunks(KEYS_PER_REQUEST).collect(),
            _ => objects.chunks(1).collect(),
        };
        let batches = &batches;
        let outcomes: Vec<Vec<Outcome>> = futures_util::stream::iter(0..batches.len())
            .map(|at| async move {
                let batch = batches[at];
                let outcomes = match kind {
                    ObjectKind::Tag => self.purge_keys(batch, progress).await,
                    ObjectKind::Everything => vec![self.purge_all(progress).await],
                    _ => vec![self.purge_url(&batch[0], progress).await],
                };
                for (object, outcome) in batch.iter().zip(&outcomes) {
                    progress.settled(std::slice::from_ref(object), outcome);
                }
                let failed = outcomes.iter().filter(|outcome| !outcome.status.is_success()).count();
                progress.finished(batch.len(), failed);
                outcomes
            })
            .buffered(self.concurrency)
            .collect()
            .await;
        outcomes.into_iter().flatten().collect()
    }

    /// Asks the edge in front of the URL, as Fastly's edges answer.
    async fn verify(&self, url: &str, since: std::time::SystemTime, edge: &crate::EdgeProbe) -> crate::Verdict {
        edge.check(url, since, crate::verify::Vendor::Fastly).await
    }

    async fn probe(&self) -> Result<String, String> {
        let url = format!("{}/service/{}", self.api_base, self.service);
        let answer = self
            .http
            .get(&url)
            .header("fastly-key", &self.token)
            .send()
            .await
            .map_err(|error| edgecache_base::net::error_chain(&error))?;
        match answer.status().as_u16() {
            200 => Ok(format!(
                "service {}{}",
                self.service,
                if self.soft { ", soft purges" } else { "" }
            )),
            status => Err(format!("{status}: the service or the token was refused")),
        }
    }
}
