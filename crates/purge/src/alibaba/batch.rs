//! The batch engine: validate every line, check the quota, pack, submit
//! concurrently within the call rate, journal, poll and report each URL.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;

mod poll;
mod submit;

use self::submit::record_submissions;

use super::client::{AlibabaCdnClient, AlibabaError, ObjectType, PrefetchOptions, Quota};
use super::report::{RunReport, UrlOutcome, UrlReport};
use crate::journal::{Header, Journal, JournalError};
use crate::{Backoff, InvalidObject, ObjectKind};

/// At most this many domains in one call.
const MAX_DOMAINS_PER_CALL: usize = 10;

/// What a batch run does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Refresh (purge) cached copies.
    Refresh {
        /// What the paths are.
        object_type: ObjectType,
        /// Purge even when the origin's copy has not changed.
        force: bool,
    },
    /// Prefetch (warm) URLs into the cache.
    Prefetch(PrefetchOptions),
}

impl Operation {
    fn name(&self) -> &'static str {
        match self {
            Operation::Refresh { .. } => "refresh",
            Operation::Prefetch(_) => "prefetch",
        }
    }

    fn object_type(&self) -> Option<ObjectType> {
        match self {
            Operation::Refresh { object_type, .. } => Some(*object_type),
            Operation::Prefetch(_) => None,
        }
    }

    /// The API's per-call maximum.
    pub fn max_per_call(&self) -> usize {
        match self {
            Operation::Refresh {
                object_type: ObjectType::File | ObjectType::IgnoreParams,
                ..
            } => 1000,
            Operation::Refresh {
                object_type: ObjectType::Directory,
                ..
            } => 100,
            Operation::Refresh {
                object_type: ObjectType::Regex,
                ..
            } => 1,
            Operation::Prefetch(_) => 100,
        }
    }

    /// What the quota counts, and (remaining, daily quota) of it.
    fn quota(&self, quota: &Quota) -> (&'static str, u64, u64) {
        match self {
            Operation::Refresh { object_type, .. } => match object_type {
                ObjectType::File => ("URL refreshes", quota.url_remain, quota.url_quota),
                ObjectType::Directory => ("directory refreshes", quota.dir_remain, quota.dir_quota),
                ObjectType::Regex => ("regex refreshes", quota.regex_remain, quota.regex_quota),
                ObjectType::IgnoreParams => (
                    "parameter-ignoring refreshes",
                    quota.ignore_params_remain,
                    quota.ignore_params_quota,
                ),
            },
            Operation::Prefetch(_) => ("prefetches", quota.preload_remain, quota.preload_quota),
        }
    }

    fn describe(&self) -> String {
        match self.object_type() {
            Some(object_type) => format!("{object_type} refresh"),
            None => "prefetch".into(),
        }
    }
}

/// A journal's first line: which operation it records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
struct JournalHeader {
    edgecache_journal: u32,
    operation: String,
    object_type: Option<ObjectType>,
}

impl Header for JournalHeader {
    fn describe(&self) -> String {
        match self.object_type {
            Some(object_type) => format!("{} {object_type}", self.operation),
            None => self.operation.clone(),
        }
    }
}

/// A journal record: a call the CDN accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
struct AcceptedBatch {
    urls: Vec<String>,
    task_ids: Vec<String>,
    request_id: String,
}

/// Why a batch run did not start. Nothing was sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Some lines are not valid for this operation.
    #[error("{} invalid line(s), nothing sent; first: {:?}: {}", .0.len(), .0[0].object, .0[0].reason)]
    Invalid(Vec<InvalidObject>),
    /// The batch size is above the API's per-call maximum.
    #[error("a batch size of {given} is above the API's maximum of {max} per call for a {what}")]
    BatchSize {
        /// The size asked for.
        given: usize,
        /// The API's maximum.
        max: usize,
        /// The operation.
        what: String,
    },
    /// The list needs more than today's remaining quota.
    #[error("the list needs {needed} {what} but only {remaining} of today's {quota} remain; nothing was sent")]
    QuotaExceeded {
        /// What the quota counts.
        what: &'static str,
        /// How many this run would use.
        needed: u64,
        /// How many remain today.
        remaining: u64,
        /// The daily quota.
        quota: u64,
    },
    /// The quota could not be read.
    #[error("checking the quota: {0}")]
    Quota(#[source] AlibabaError),
    /// The journal could not be used.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// A step of a batch run, for progress bars. Counts are URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Accepted by the CDN.
    Submitted(usize),
    /// Finished by the CDN (or accepted, when not waiting).
    Completed(usize),
    /// Failed, refused, or timed out.
    Failed(usize),
}

type StepFn = Arc<dyn Fn(Step) + Send + Sync>;
type AcceptedFn = Arc<dyn Fn(&[String]) + Send + Sync>;
type SendingFn = Arc<dyn Fn(&[String]) -> BoxFuture<'static, bool> + Send + Sync>;

/// A call's outcome (`None` in its place: not sent, the run was stopped).
type SubmitResult = Result<super::Submitted, AlibabaError>;

/// What [`BatchJob::plan`] decided.
struct Planned {
    reports: Vec<UrlReport>,
    /// Accepted batches: their members (indexes into `reports`) and tasks.
    batches: Vec<(Vec<usize>, Vec<String>)>,
    to_send: Vec<usize>,
    journal: Option<Journal>,
    batch_size: usize,
}

/// A batch refresh or prefetch, configured with builder methods and started
/// with [`BatchJob::run`]. Made by [`AlibabaCdnClient::batch`].
///
/// ```no_run
/// use std::time::Duration;
/// use edgecache_purge::alibaba::{AlibabaCdnClient, Credentials, ObjectType, Operation};
///
/// # async fn run(urls: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
/// let cdn = AlibabaCdnClient::new(Credentials::load(None)?)?;
/// let report = cdn
///     .batch(Operation::Refresh { object_type: ObjectType::File, force: false })
///     .journal("refresh.journal", true) // resume if an earlier run was interrupted
///     .timeout(Duration::from_secs(600))
///     .run(urls)
///     .await?;
/// for url in report.unsuccessful() {
///     eprintln!("{}: {:?}", url.url, url.outcome);
/// }
/// # Ok(()) }
/// ```
pub struct BatchJob<'a> {
    client: &'a AlibabaCdnClient,
    operation: Operation,
    batch_size: Option<usize>,
    concurrency: usize,
    wait: bool,
    timeout: Duration,
    poll: Backoff,
    journal: Option<(PathBuf, bool)>,
    progress: Option<StepFn>,
    accepted: Option<AcceptedFn>,
    sending: Option<SendingFn>,
    // In a mutex only so that the job is `Sync` and its run future `Send`.
    stop: std::sync::Mutex<Option<BoxFuture<'static, ()>>>,
}

impl AlibabaCdnClient {
    /// A batch run of `operation` over a list of any length.
    pub fn batch(&self, operation: Operation) -> BatchJob<'_> {
        BatchJob {
            client: self,
            operation,
            batch_size: None,
            concurrency: 8,
            wait: true,
            timeout: Duration::from_secs(30 * 60),
            poll: Backoff {
                base: Duration::from_secs(2),
                cap: Duration::from_secs(30),
            },
            journal: None,
            progress: None,
            accepted: None,
            sending: None,
            stop: std::sync::Mutex::new(None),
        }
    }
}

impl BatchJob<'_> {
    /// URLs per call. Default: the API's maximum (1000 URLs, 100
    /// directories, 1 regex, 100 prefetches); larger is an error.
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = Some(size.max(1));
        self
    }

    /// Calls in flight at once (the call rate still applies). Default: 8.
    pub fn concurrency(mut self, calls: usize) -> Self {
        self.concurrency = calls.max(1);
        self
    }

    /// Whether to poll the tasks until they finish. Default: yes.
    pub fn wait(mut self, wait: bool) -> Self {
        self.wait = wait;
        self
    }

    /// How long to poll before reporting unfinished tasks as timed out. Default: 30 minutes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Delays between polls. Default: 2 s, growing to 30 s.
    pub fn poll_interval(mut self, backoff: Backoff) -> Self {
        self.poll = backoff;
        self
    }

    /// Records accepted batches in a journal file. With `resume`, URLs an
    /// earlier run recorded are not submitted again (their tasks are polled);
    /// without it, a journal that already has records is an error.
    pub fn journal(mut self, path: impl Into<PathBuf>, resume: bool) -> Self {
        self.journal = Some((path.into(), resume));
        self
    }

    /// Called at each step (for progress bars).
    pub fn on_progress(mut self, progress: impl Fn(Step) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// Called with a call's URLs (as sent) as soon as the CDN accepts it,
    /// for a journal kept outside the job.
    pub fn on_accepted(mut self, accepted: impl Fn(&[String]) + Send + Sync + 'static) -> Self {
        self.accepted = Some(Arc::new(accepted));
        self
    }

    /// Awaited with a call's URLs (as sent) before the call, for a journal
    /// kept outside the job that records what may reach the CDN; the call
    /// is sent only if it answers `true`.
    pub fn on_sending(
        mut self,
        sending: impl Fn(&[String]) -> BoxFuture<'static, bool> + Send + Sync + 'static,
    ) -> Self {
        self.sending = Some(Arc::new(sending));
        self
    }

    /// Stops the run when `signal` resolves (on Ctrl-C, say): nothing more
    /// is submitted, calls in flight finish and are journaled, and the
    /// report marks what was not sent.
    pub fn stop_when(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.stop = std::sync::Mutex::new(Some(Box::pin(signal)));
        self
    }

    /// Runs the batch. Every line is validated, the journal opened and the
    /// quota checked before anything is sent.
    pub async fn run<S: Into<String>>(mut self, objects: impl IntoIterator<Item = S>) -> Result<RunReport, BatchError> {
        let objects: Vec<String> = objects.into_iter().map(Into::into).collect();
        let Planned {
            mut reports,
            mut batches,
            to_send,
            journal,
            batch_size,
        } = self.plan(&objects)?;
        let duplicates = objects.len() - reports.len();
        self.check_quota(to_send.len()).await?;
        let packed = pack(&reports, to_send, batch_size);

        let stop = self
            .stop
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let (stopped, watcher) = crate::call::watch_stop(stop);
        let this = &self;
        let progress = |step| {
            if let Some(progress) = &this.progress {
                progress(step);
            }
        };
        let sent = self
            .submit_all(&reports, packed, journal, stopped.clone(), &progress)
            .await;
        let calls = record_submissions(&mut reports, &mut batches, sent);

        let was_stopped = *stopped.borrow();
        if self.wait && !was_stopped {
            self.poll_until_done(&mut reports, batches, stopped.clone(), &progress)
                .await;
        } else if !self.wait {
            let accepted = reports.iter().filter(|url| url.outcome == UrlOutcome::Accepted).count();
            progress(Step::Completed(accepted));
        }
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        Ok(RunReport {
            operation: self.operation.name(),
            object_type: self.operation.object_type(),
            urls: reports,
            duplicates,
            calls,
            stopped: *stopped.borrow(),
        })
    }

    /// Everything decided before the first call: the checked URLs, the
    /// batch size, the journal, and the batches an earlier run had accepted
    /// (polled, never resubmitted).
    fn plan(&self, objects: &[String]) -> Result<Planned, BatchError> {
        let urls = self.prepare(objects)?;
        let max = self.operation.max_per_call();
        let batch_size = self.batch_size.unwrap_or(max);
        if batch_size > max {
            return Err(BatchError::BatchSize {
                given: batch_size,
                max,
                what: self.operation.describe(),
            });
        }
        let header = JournalHeader {
            edgecache_journal: 1,
            operation: self.operation.name().to_owned(),
            object_type: self.operation.object_type(),
        };
        let (journal, earlier) = match &self.journal {
            Some((path, resume)) => {
                let (journal, earlier) = Journal::open::<_, AcceptedBatch>(path, &header, *resume)?;
                (Some(journal), earlier)
            }
            None => (None, Vec::new()),
        };
        let mut reports: Vec<UrlReport> = urls
            .iter()
            .map(|(index, url)| UrlReport {
                index: *index,
                url: url.clone(),
                task_ids: Vec::new(),
                resumed: false,
                outcome: UrlOutcome::NotSubmitted,
            })
            .collect();
        let position: HashMap<&str, usize> = urls
            .iter()
            .enumerate()
            .map(|(position, (_, url))| (url.as_str(), position))
            .collect();
        let mut batches = Vec::new();
        for accepted in earlier {
            let members: Vec<usize> = accepted
                .urls
                .iter()
                .filter_map(|url| position.get(url.as_str()).copied())
                .collect();
            for &member in &members {
                reports[member].resumed = true;
                reports[member].task_ids = accepted.task_ids.clone();
                reports[member].outcome = UrlOutcome::Accepted;
            }
            if !members.is_empty() {
                batches.push((members, accepted.task_ids));
            }
        }
        let to_send = (0..reports.len()).filter(|&at| !reports[at].resumed).collect();
        Ok(Planned {
            reports,
            batches,
            to_send,
            journal,
            batch_size,
        })
    }

    /// Refuses a run the day's quota can't take; a run with nothing left to
    /// send asks nothing.
    async fn check_quota(&self, to_send: usize) -> Result<(), BatchError> {
        if to_send == 0 {
            return Ok(());
        }
        let quota = self.client.quota().await.map_err(BatchError::Quota)?;
        let (what, remaining, daily) = self.operation.quota(&quota);
        let needed = u64::try_from(to_send).unwrap_or(u64::MAX);
        if needed > remaining {
            return Err(BatchError::QuotaExceeded {
                what,
                needed,
                remaining,
                quota: daily,
            });
        }
        Ok(())
    }

    /// Validates and encodes every line; `(index, url)` of distinct URLs.
    fn prepare(&self, objects: &[String]) -> Result<Vec<(usize, String)>, BatchError> {
        prepare(self.operation.object_type(), objects).map_err(BatchError::Invalid)
    }
}

/// Checks every line as a run of `operation` would, without sending
/// anything: what is wrong with each invalid one (empty when all are fine).
/// The rules are [`check_url`](crate::check_url)'s, plus those of the
/// object type.
pub fn check_objects(operation: &Operation, objects: &[String]) -> Vec<InvalidObject> {
    prepare(operation.object_type(), objects).err().unwrap_or_default()
}

/// Validates and encodes every line; `(index, url)` of distinct URLs.
fn prepare(object_type: Option<ObjectType>, objects: &[String]) -> Result<Vec<(usize, String)>, Vec<InvalidObject>> {
    let prepared = crate::check_each(objects, "nothing to send", |object| {
        prepare_url(object_type, object.trim())
    })?;
    let mut seen = HashSet::new();
    Ok(prepared
        .into_iter()
        .filter(|(_, url)| seen.insert(url.clone()))
        .collect())
}

/// The URL to send for one line, or why the line cannot be sent: the
/// shared [`check_object`](crate::check_object), plus Alibaba's
/// rule that a directory ends with `/`. Regexes are sent as given.
pub(super) fn prepare_url(object_type: Option<ObjectType>, line: &str) -> Result<String, String> {
    let kind = match object_type {
        Some(ObjectType::Regex) => ObjectKind::Regex,
        Some(ObjectType::Directory) => ObjectKind::Prefix,
        _ => ObjectKind::Url,
    };
    let url = crate::check_object(kind, line)?;
    if kind == ObjectKind::Prefix && !url.ends_with('/') {
        return Err("a directory must end with `/`".into());
    }
    Ok(url)
}

/// The authority of `scheme://authority/…`.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or_default()
}

/// Packs URLs into calls of at most `size`, from at most 10 domains each.
/// URLs are grouped by domain first, so calls span as few as possible.
fn pack(reports: &[UrlReport], members: Vec<usize>, size: usize) -> Vec<Vec<usize>> {
    let mut by_host: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut host_at: HashMap<&str, usize> = HashMap::new();
    for member in members {
        let host = host_of(&reports[member].url);
        let at = *host_at.entry(host).or_insert_with(|| {
            by_host.push((host, Vec::new()));
            by_host.len() - 1
        });
        by_host[at].1.push(member);
    }
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut hosts = 0;
    for (_, members) in by_host {
        if hosts == MAX_DOMAINS_PER_CALL && !batch.is_empty() {
            batches.push(std::mem::take(&mut batch));
            hosts = 0;
        }
        hosts += 1;
        for member in members {
            if batch.len() == size {
                batches.push(std::mem::take(&mut batch));
                hosts = 1;
            }
            batch.push(member);
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(url: &str) -> UrlReport {
        UrlReport {
            index: 0,
            url: url.into(),
            task_ids: Vec::new(),
            resumed: false,
            outcome: UrlOutcome::NotSubmitted,
        }
    }

    #[test]
    fn urls_are_encoded_once() {
        let file = Some(ObjectType::File);
        assert_eq!(
            prepare_url(file, "https://example.com/a b/café?q=x y").as_deref(),
            Ok("https://example.com/a%20b/caf%C3%A9?q=x%20y")
        );
        assert_eq!(
            prepare_url(file, "https://example.com/a%20b/caf%C3%A9").as_deref(),
            Ok("https://example.com/a%20b/caf%C3%A9")
        );
        assert!(
            prepare_url(file, "https://example.com/100%")
                .unwrap_err()
                .contains("%25")
        );
        assert!(
            prepare_url(file, "ftp://example.com/a")
                .unwrap_err()
                .contains("http://")
        );
        assert!(prepare_url(file, "example.com/a").unwrap_err().contains("http://"));
        assert!(prepare_url(file, "https:///a").is_err());
        assert!(
            prepare_url(Some(ObjectType::Directory), "https://example.com/dir")
                .unwrap_err()
                .contains("/")
        );
        assert_eq!(
            prepare_url(Some(ObjectType::Regex), "https://example.com/img/.*\\.png").as_deref(),
            Ok("https://example.com/img/.*\\.png")
        );
    }

    #[test]
    fn batches_hold_at_most_ten_domains_and_the_batch_size() {
        let reports: Vec<UrlReport> = (0..25)
            .flat_map(|host| (0..7).map(move |n| report(&format!("https://h{host}.example.com/{n}"))))
            .collect();
        let batches = pack(&reports, (0..reports.len()).collect(), 60);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), reports.len());
        for batch in &batches {
            assert!(batch.len() <= 60);
            let hosts: HashSet<&str> = batch.iter().map(|&at| host_of(&reports[at].url)).collect();
            assert!(hosts.len() <= MAX_DOMAINS_PER_CALL, "{} domains", hosts.len());
        }
        // 25 domains need at least 3 calls; grouping keeps it at that.
        assert_eq!(batches.len(), 3);
    }
}
