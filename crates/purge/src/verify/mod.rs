//! Verification after a purge: is each URL gone, at each target? And a
//! gentle rewarm of those that are.
//!
//! A CDN's purge API answers *accepted*, never *evicted*. [`Purger::verify`]
//! asks each target what it now serves for each purged URL:
//!
//! - a CDN target asks the edge in front of the URL, with the vendor's own
//!   debug headers, and reads the vendor's cache-status header (`X-Cache`,
//!   `CF-Cache-Status`), `Age`, `Date` and Alibaba Cloud's save time against
//!   the time the purge was sent;
//! - the client cache reads its store; the versioned server says when it
//!   last asked the origin.
//!
//! Each URL then reads [`Seen::Evicted`], [`Seen::StillCached`] (with the
//! age seen) or [`Seen::Unknown`] (and why). A URL still cached is asked
//! again with backoff until [`Verify::timeout`]: edges settle within seconds.
//!
//! One request reaches one edge of many. A check says which edge answered
//! when the vendor names it, and claims nothing about the others.
//!
//! ```no_run
//! # use edgecache_purge::{Objects, Purger, Verify};
//! # async fn run(purger: Purger) -> Result<(), Box<dyn std::error::Error>> {
//! let report = purger.purge(Objects::urls(["https://www.example.com/app.css"])).await?;
//! let checked = purger.verify(&report, Verify::default().rewarm(true)).await?;
//! for check in checked.still_cached() {
//!     eprintln!("{} still serves {} ({})", check.target, check.url, check.verdict.detail);
//! }
//! # Ok(()) }
//! ```

mod edge;
mod signals;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::Serialize;

pub use self::edge::EdgeProbe;
pub use self::signals::Vendor;
use super::{Backoff, Layer, ObjectKind, Outcome, Purger, Report, Status, Target};

/// What a target serves for a URL after its purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seen {
    /// Gone: the target went to the origin after the purge, or the copy it
    /// serves is younger than the purge, or it holds none.
    Evicted,
    /// It still serves a copy older than the purge.
    StillCached,
    /// No signal to tell; the detail says why.
    Unknown,
}

impl Seen {
    /// As reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Seen::Evicted => "evicted",
            Seen::StillCached => "still_cached",
            Seen::Unknown => "unknown",
        }
    }
}

/// One target's answer for one URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Verdict {
    /// What it serves.
    pub seen: Seen,
    /// Why the check says so: the header it read, the copy's age.
    pub detail: String,
    /// The edge that answered, when the vendor names it (`X-Served-By`,
    /// `CF-Ray`'s data centre, `X-Cache`'s host).
    pub edge: Option<String>,
    /// The `Age` the edge sent.
    pub age_seconds: Option<u64>,
}

impl Verdict {
    fn new(seen: Seen, detail: impl Into<String>) -> Self {
        Self {
            seen,
            detail: detail.into(),
            edge: None,
            age_seconds: None,
        }
    }

    /// Evicted, and how the target knows.
    pub fn evicted(detail: impl Into<String>) -> Self {
        Self::new(Seen::Evicted, detail)
    }

    /// Still cached, and what was seen.
    pub fn still_cached(detail: impl Into<String>) -> Self {
        Self::new(Seen::StillCached, detail)
    }

    /// Unknown, and why.
    pub fn unknown(detail: impl Into<String>) -> Self {
        Self::new(Seen::Unknown, detail)
    }
}

/// How [`Purger::verify`] checks, and whether it rewarms.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Verify {
    /// How long a URL still cached is asked again (with backoff) before
    /// it is reported still cached. Default: 30 s.
    pub timeout: Duration,
    /// After the checks, fetch each URL that was purged everywhere and is
    /// cached nowhere once through the edge (Alibaba Cloud: its own
    /// prefetch). Default: off.
    pub rewarm: bool,
    /// Requests at once to any one host, checks and rewarm together. Default: 4.
    pub per_host_concurrency: usize,
    /// Requests a second to any one host, checks and rewarm together. Default: 10.
    pub per_host_rate: f64,
    /// The URLs to check after a purge that names none (a prefix, a tag, a
    /// host). Empty, the default, checks those the targets know the objects
    /// cover (the versioned server knows its resources' tags). Ignored after
    /// a URL purge: its URLs are checked.
    pub urls: Vec<String>,
}

impl Default for Verify {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            rewarm: false,
            per_host_concurrency: 4,
            per_host_rate: 10.0,
            urls: Vec::new(),
        }
    }
}

impl Verify {
    /// Sets [`Verify::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`Verify::rewarm`].
    pub fn rewarm(mut self, rewarm: bool) -> Self {
        self.rewarm = rewarm;
        self
    }

    /// Sets the per-host bound: requests at once, and a second.
    pub fn per_host(mut self, concurrency: usize, rate: f64) -> Self {
        self.per_host_concurrency = concurrency;
        self.per_host_rate = rate;
        self
    }

    /// Sets [`Verify::urls`].
    pub fn urls<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>) -> Self {
        self.urls = urls.into_iter().map(Into::into).collect();
        self
    }
}

/// One URL at one target: a line of the verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Check {
    /// The target's name.
    pub target: String,
    /// The URL checked.
    pub url: String,
    /// Its position in the purge's list (or in [`Verify::urls`]), from 0.
    pub index: usize,
    /// What the target serves.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// How many times it was asked (0 when it was not: the purge failed there).
    pub attempts: u32,
}

/// One URL's rewarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Rewarm {
    /// The URL.
    pub url: String,
    /// How: `edge` (a fetch through it), or the target that warmed it its
    /// own way (`alibaba`: its prefetch).
    pub via: String,
    /// What became of it; `not_sent` with the reason when it was held back
    /// (its purge failed, or an edge still serves the old copy).
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The result of [`Purger::verify`]; the versioned server's purge history
/// carries it as JSON.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Verification {
    /// One per target and URL, target by target in purge order.
    pub checks: Vec<Check>,
    /// One per URL when a rewarm was asked for.
    pub rewarmed: Vec<Rewarm>,
    /// How long the checks and the rewarm took.
    pub elapsed: Duration,
}

impl Verification {
    /// The checks that found a copy older than the purge.
    pub fn still_cached(&self) -> impl Iterator<Item = &Check> {
        self.checks
            .iter()
            .filter(|check| check.verdict.seen == Seen::StillCached)
    }

    /// Whether no target still serves an old copy of any URL.
    pub fn is_evicted_everywhere(&self) -> bool {
        self.still_cached().next().is_none()
    }

    /// The check of `url` at `target`.
    pub fn check(&self, target: &str, url: &str) -> Option<&Check> {
        self.checks
            .iter()
            .find(|check| check.target == target && check.url == url)
    }

    /// How many checks read `seen`.
    pub fn count(&self, seen: Seen) -> usize {
        self.checks.iter().filter(|check| check.verdict.seen == seen).count()
    }
}

/// Why a verification could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The HTTP client for the edges could not be made.
    #[error("cannot make the HTTP client for edge checks: {0}")]
    Client(String),
}

/// One URL to check at one target.
struct Job {
    target: Arc<dyn Target>,
    url: String,
    index: usize,
    /// When its purge was sent there, or why it is not checked.
    since: Result<SystemTime, String>,
    /// Its purge failed or was not sent there: the URL is never rewarmed.
    failed: bool,
}

/// Checks run this many at once across hosts (each host has its own, lower bound).
const CONCURRENT_CHECKS: usize = 64;

impl Purger {
    /// Checks, at every target of `report`, whether each purged URL is
    /// gone, against the time its purge was sent there; then, with
    /// [`Verify::rewarm`], warms each URL that is. A URL whose purge failed
    /// is reported unknown at that target and is never rewarmed.
    pub async fn verify(&self, report: &Report, options: Verify) -> Result<Verification, VerifyError> {
        let urls = if report.kind == ObjectKind::Url || !options.urls.is_empty() {
            options.urls.clone()
        } else {
            self.urls_covered(report).await
        };
        let mut jobs = Vec::new();
        for target_report in &report.targets {
            let Some(target) = self.target_named(&target_report.name) else {
                continue;
            };
            let since = target_report
                .started_at
                .ok_or_else(|| "the purge never started here".to_owned());
            if report.kind == ObjectKind::Url {
                for line in &target_report.objects {
                    let (since, failed) = match line.outcome.status {
                        Status::Done | Status::Accepted => (since.clone(), false),
                        Status::Skipped => (Err(format!("not purged here: {}", line.outcome.detail)), false),
                        Status::Failed | Status::NotSent => (
                            Err(format!("not checked: the purge {} here", line.outcome.status.as_str())),
                            true,
                        ),
                    };
                    jobs.push(Job {
                        target: target.clone(),
                        url: line.object.clone(),
                        index: line.index,
                        since,
                        failed,
                    });
                }
            } else {
                let skipped = target_report
                    .objects
                    .iter()
                    .find(|line| line.outcome.status == Status::Skipped);
                let failed = !target_report.is_success();
                let since = match (failed, skipped) {
                    (true, _) => Err("not checked: the purge failed here for some objects".to_owned()),
                    (false, Some(line)) if target_report.count(Status::Skipped) == target_report.objects.len() => {
                        Err(format!("not purged here: {}", line.outcome.detail))
                    }
                    _ => since.clone(),
                };
                for (index, url) in urls.iter().enumerate() {
                    jobs.push(Job {
                        target: target.clone(),
                        url: url.clone(),
                        index,
                        since: since.clone(),
                        failed,
                    });
                }
            }
        }
        self.run_verification(jobs, &options).await
    }

    /// Checks `urls` at every target against a purge sent at `since`
    /// (`edgecache purge verify --since 10m`), and rewarms with
    /// [`Verify::rewarm`].
    pub async fn verify_urls(
        &self,
        urls: &[String],
        since: SystemTime,
        options: Verify,
    ) -> Result<Verification, VerifyError> {
        let jobs = self
            .targets()
            .iter()
            .flat_map(|target| {
                urls.iter().enumerate().map(|(index, url)| Job {
                    target: target.clone(),
                    url: url.clone(),
                    index,
                    since: Ok(since),
                    failed: false,
                })
            })
            .collect();
        self.run_verification(jobs, &options).await
    }

    /// The URLs the report's objects cover, as the targets that know say
    /// (the versioned server for a tag or a prefix), each once.
    async fn urls_covered(&self, report: &Report) -> Vec<String> {
        let mut objects: Vec<&str> = Vec::new();
        for line in report.lines() {
            if !objects.contains(&line.object.as_str()) {
                objects.push(&line.object);
            }
        }
        let mut urls: Vec<String> = Vec::new();
        for target in self.targets() {
            for object in &objects {
                for url in target.urls_of(report.kind, object).await.unwrap_or_default() {
                    if !urls.contains(&url) {
                        urls.push(url);
                    }
                }
            }
        }
        urls
    }

    fn target_named(&self, name: &str) -> Option<Arc<dyn Target>> {
        self.targets().iter().find(|target| target.name() == name).cloned()
    }

    async fn run_verification(&self, jobs: Vec<Job>, options: &Verify) -> Result<Verification, VerifyError> {
        let started = Instant::now();
        let probe = EdgeProbe::new(options.per_host_concurrency, options.per_host_rate)
            .map_err(|error| VerifyError::Client(edgecache_base::net::error_chain(&error)))?;
        let checks = check_until_settled(&jobs, &probe, options.timeout).await;
        let rewarmed = if options.rewarm {
            rewarm(&jobs, &checks, &probe).await
        } else {
            Vec::new()
        };
        Ok(Verification {
            checks,
            rewarmed,
            elapsed: started.elapsed(),
        })
    }
}

/// Checks every job, then asks again those still cached, with backoff,
/// until none is or `timeout` has passed.
async fn check_until_settled(jobs: &[Job], probe: &EdgeProbe, timeout: Duration) -> Vec<Check> {
    let deadline = Instant::now() + timeout;
    let backoff = Backoff {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(8),
    };
    let mut checks: Vec<Check> = jobs
        .iter()
        .map(|job| Check {
            target: job.target.name(),
            url: job.url.clone(),
            index: job.index,
            verdict: match &job.since {
                Ok(_) => Verdict::unknown("not checked yet"),
                Err(why) => Verdict::unknown(why.clone()),
            },
            attempts: 0,
        })
        .collect();
    let mut pending: Vec<usize> = (0..jobs.len()).filter(|&at| jobs[at].since.is_ok()).collect();
    let mut round = 0;
    while !pending.is_empty() {
        let checks_now: Vec<BoxFuture<'_, (usize, Verdict)>> = pending
            .iter()
            .map(|&at| -> BoxFuture<'_, (usize, Verdict)> {
                let job = &jobs[at];
                let since = job.since.clone().unwrap_or(SystemTime::UNIX_EPOCH);
                Box::pin(async move { (at, job.target.verify(&job.url, since, probe).await) })
            })
            .collect();
        let verdicts: Vec<(usize, Verdict)> = futures_util::stream::iter(checks_now)
            .buffer_unordered(CONCURRENT_CHECKS)
            .collect()
            .await;
        for (at, verdict) in verdicts {
            checks[at].verdict = verdict;
            checks[at].attempts = checks[at].attempts.saturating_add(1);
        }
        pending.retain(|&at| checks[at].verdict.seen == Seen::StillCached);
        let delay = backoff.delay(round, None);
        if pending.is_empty() || Instant::now() + delay > deadline {
            break;
        }
        tracing::debug!(still_cached = pending.len(), ?delay, "checking again");
        tokio::time::sleep(delay).await;
        round = round.saturating_add(1);
    }
    checks
}

/// Warms each URL purged everywhere and cached nowhere, once: through a
/// target's own warm-up where it has one, else a fetch through the edge.
async fn rewarm(jobs: &[Job], checks: &[Check], probe: &EdgeProbe) -> Vec<Rewarm> {
    let mut order: Vec<&str> = Vec::new();
    let mut held: HashMap<&str, String> = HashMap::new();
    for (job, check) in jobs.iter().zip(checks) {
        let url = job.url.as_str();
        if !order.contains(&url) {
            order.push(url);
        }
        let reason = match (&job.since, check.verdict.seen) {
            (Err(why), _) if job.failed => Some(format!("{}: {why}", check.target)),
            (_, Seen::StillCached) => Some(format!(
                "{} still serves the old copy; a fetch would only hit it",
                check.target
            )),
            _ => None,
        };
        if let Some(reason) = reason {
            held.entry(url).or_insert(reason);
        }
    }
    let ready: Vec<String> = order
        .iter()
        .filter(|url| !held.contains_key(*url))
        .map(|url| (*url).to_owned())
        .collect();
    let mut results: HashMap<String, Rewarm> = HashMap::new();
    let mut edges: Vec<&Arc<dyn Target>> = Vec::new();
    for job in jobs {
        if job.target.layer() == Layer::Edge && !edges.iter().any(|seen| Arc::ptr_eq(seen, &job.target)) {
            edges.push(&job.target);
        }
    }
    // Targets with a warm-up of their own (Alibaba Cloud's prefetch) warm the URLs they purged.
    for target in &edges {
        let theirs: Vec<String> = ready
            .iter()
            .filter(|url| {
                jobs.iter()
                    .any(|job| Arc::ptr_eq(&job.target, target) && &job.url == *url)
            })
            .cloned()
            .collect();
        if theirs.is_empty() {
            continue;
        }
        if let Some(outcomes) = target.rewarm(&theirs).await {
            let via = target.name();
            for (url, outcome) in theirs.into_iter().zip(outcomes) {
                results.entry(url.clone()).or_insert(Rewarm {
                    url,
                    via: via.clone(),
                    outcome,
                });
            }
        }
    }
    let fetch: Vec<String> = if edges.is_empty() {
        Vec::new()
    } else {
        ready
            .iter()
            .filter(|url| !results.contains_key(*url))
            .cloned()
            .collect()
    };
    // Owned URLs, boxed futures: a verification future stays `Send` to spawn.
    let fetches: Vec<BoxFuture<'_, (String, Outcome)>> = fetch
        .into_iter()
        .map(|url| -> BoxFuture<'_, (String, Outcome)> {
            Box::pin(async move {
                let outcome = probe.warm(&url).await;
                (url, outcome)
            })
        })
        .collect();
    let fetched: Vec<(String, Outcome)> = futures_util::stream::iter(fetches)
        .buffer_unordered(CONCURRENT_CHECKS)
        .collect()
        .await;
    for (url, outcome) in fetched {
        results.insert(
            url.clone(),
            Rewarm {
                url,
                via: "edge".into(),
                outcome,
            },
        );
    }
    // `order` holds each URL once.
    order
        .into_iter()
        .map(|url| {
            results.remove(url).unwrap_or_else(|| Rewarm {
                url: url.to_owned(),
                via: "edge".into(),
                outcome: Outcome::not_sent(
                    held.get(url)
                        .cloned()
                        .unwrap_or_else(|| "no CDN among the targets: nothing to warm".to_owned()),
                ),
            })
        })
        .collect()
}
