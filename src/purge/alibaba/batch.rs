//! The batch engine: validate every line, check the quota, pack, submit
//! concurrently within the call rate, journal, poll and report each URL.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::watch;

use super::client::{AlibabaCdnClient, AlibabaError, ObjectType, PrefetchOptions, Quota, TaskFilter, TaskStatus};
use super::journal::{Accepted, Header, Journal, JournalError};
use crate::purge::{Backoff, InvalidObject};

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

/// What became of one URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The CDN finished it.
    Complete,
    /// The CDN's task failed.
    Failed {
        /// The task's description of why.
        reason: String,
    },
    /// Accepted; the run did not wait for the task.
    Accepted,
    /// Still in progress when the run's timeout passed.
    TimedOut,
    /// The CDN refused the call that carried it, or the call never succeeded.
    Rejected {
        /// The API's error code, if it answered.
        code: Option<String>,
        /// What went wrong.
        message: String,
        /// Quote it to Alibaba Cloud support.
        request_id: Option<String>,
    },
    /// Not sent: the run was stopped first.
    NotSubmitted,
}

impl Outcome {
    /// Whether this is what the user asked for.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Complete | Outcome::Accepted)
    }
}

/// One URL and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UrlReport {
    /// Its position in the list given (the first, for duplicates).
    pub index: usize,
    /// The URL as sent (encoded where needed).
    pub url: String,
    /// The tasks of the call that carried it.
    pub task_ids: Vec<String>,
    /// Whether an earlier run, read from the journal, submitted it.
    pub resumed: bool,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The result of a batch run: every URL accounted for, in list order.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `refresh` or `prefetch`.
    pub operation: &'static str,
    /// What the refreshed paths are.
    pub object_type: Option<ObjectType>,
    /// Each distinct URL.
    pub urls: Vec<UrlReport>,
    /// Lines dropped as repeats of an earlier one.
    pub duplicates: usize,
    /// Refresh or prefetch calls the CDN accepted in this run.
    pub calls: usize,
    /// Whether the run was stopped before it finished.
    pub stopped: bool,
}

impl RunReport {
    /// Whether every URL ended as asked.
    pub fn is_success(&self) -> bool {
        !self.stopped && self.urls.iter().all(|url| url.outcome.is_success())
    }

    /// URLs with this outcome.
    pub fn count(&self, wanted: impl Fn(&Outcome) -> bool) -> usize {
        self.urls.iter().filter(|url| wanted(&url.outcome)).count()
    }

    /// URLs that did not end as asked.
    pub fn unsuccessful(&self) -> impl Iterator<Item = &UrlReport> {
        self.urls.iter().filter(|url| !url.outcome.is_success())
    }
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
pub enum Progress {
    /// Accepted by the CDN.
    Submitted(usize),
    /// Finished by the CDN (or accepted, when not waiting).
    Completed(usize),
    /// Failed, refused, or timed out.
    Failed(usize),
}

type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// A call's outcome (`None` in its place: not sent, the run was stopped).
type SubmitResult = Result<super::Submitted, AlibabaError>;

/// A batch refresh or prefetch, configured with builder methods and started
/// with [`BatchJob::run`]. Made by [`AlibabaCdnClient::batch`].
///
/// ```no_run
/// use std::time::Duration;
/// use edgecache::purge::alibaba::{AlibabaCdnClient, Credentials, ObjectType, Operation};
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
    progress: Option<ProgressFn>,
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
    pub fn on_progress(mut self, progress: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
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
        let urls = self.prepare(&objects)?;
        let duplicates = objects.len() - urls.len();

        let max = self.operation.max_per_call();
        let batch_size = self.batch_size.unwrap_or(max);
        if batch_size > max {
            return Err(BatchError::BatchSize {
                given: batch_size,
                max,
                what: self.operation.describe(),
            });
        }

        let header = Header {
            edgecache_journal: 1,
            operation: self.operation.name().to_owned(),
            object_type: self.operation.object_type(),
        };
        let (journal, earlier) = match &self.journal {
            Some((path, resume)) => {
                let (journal, earlier) = Journal::open(path, &header, *resume)?;
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
                outcome: Outcome::NotSubmitted,
            })
            .collect();
        let position: HashMap<&str, usize> = urls
            .iter()
            .enumerate()
            .map(|(position, (_, url))| (url.as_str(), position))
            .collect();

        // Batches an earlier run had accepted: polled, never resubmitted.
        let mut batches: Vec<(Vec<usize>, Vec<String>)> = Vec::new();
        for accepted in earlier {
            let members: Vec<usize> = accepted
                .urls
                .iter()
                .filter_map(|url| position.get(url.as_str()).copied())
                .collect();
            for &member in &members {
                reports[member].resumed = true;
                reports[member].task_ids = accepted.task_ids.clone();
                reports[member].outcome = Outcome::Accepted;
            }
            if !members.is_empty() {
                batches.push((members, accepted.task_ids));
            }
        }
        let to_send: Vec<usize> = (0..reports.len()).filter(|&at| !reports[at].resumed).collect();
        if !to_send.is_empty() {
            let quota = self.client.quota().await.map_err(BatchError::Quota)?;
            let (what, remaining, daily) = self.operation.quota(&quota);
            if to_send.len() as u64 > remaining {
                return Err(BatchError::QuotaExceeded {
                    what,
                    needed: to_send.len() as u64,
                    remaining,
                    quota: daily,
                });
            }
        }
        let packed = pack(&reports, to_send, batch_size);

        let (stop_sender, stopped) = watch::channel(false);
        let stop = self
            .stop
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let watcher = stop.map(|signal| {
            tokio::spawn(async move {
                signal.await;
                let _ = stop_sender.send(true);
            })
        });
        let this = &self;
        let progress = |step| {
            if let Some(progress) = &this.progress {
                progress(step);
            }
        };

        let sent: Vec<(Vec<usize>, Option<SubmitResult>)> = futures_util::stream::iter(packed)
            .map(|members| {
                let stopped = stopped.clone();
                let paths: Vec<String> = members.iter().map(|&at| reports[at].url.clone()).collect();
                let journal = journal.clone();
                async move {
                    if *stopped.borrow() {
                        return (members, None);
                    }
                    let submitted = match &this.operation {
                        Operation::Refresh { object_type, force } => {
                            this.client.refresh(&paths, *object_type, *force).await
                        }
                        Operation::Prefetch(options) => this.client.prefetch(&paths, options).await,
                    };
                    if let (Ok(submitted), Some(journal)) = (&submitted, &journal) {
                        let record = Accepted {
                            urls: paths,
                            task_ids: submitted.task_ids.clone(),
                            request_id: submitted.request_id.clone(),
                        };
                        if let Err(error) = journal.record(&record).await {
                            tracing::error!(%error, "a batch was accepted but could not be journaled");
                        }
                    }
                    (members, Some(submitted))
                }
            })
            .buffer_unordered(self.concurrency)
            .inspect(|(members, submitted)| match submitted {
                Some(Ok(_)) => progress(Progress::Submitted(members.len())),
                Some(Err(_)) => progress(Progress::Failed(members.len())),
                None => {}
            })
            .collect()
            .await;

        let mut calls = 0;
        for (members, submitted) in sent {
            match submitted {
                None => {}
                Some(Ok(submitted)) => {
                    calls += 1;
                    for &member in &members {
                        reports[member].task_ids = submitted.task_ids.clone();
                        reports[member].outcome = Outcome::Accepted;
                    }
                    batches.push((members, submitted.task_ids));
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, urls = members.len(), "a batch was not accepted");
                    let outcome = Outcome::Rejected {
                        code: error.code().map(str::to_owned),
                        message: error.to_string(),
                        request_id: error.request_id().map(str::to_owned),
                    };
                    for &member in &members {
                        reports[member].outcome = outcome.clone();
                    }
                }
            }
        }

        let was_stopped = *stopped.borrow();
        if self.wait && !was_stopped {
            self.poll_until_done(&mut reports, batches, stopped.clone(), &progress)
                .await;
        } else if !self.wait {
            let accepted = reports.iter().filter(|url| url.outcome == Outcome::Accepted).count();
            progress(Progress::Completed(accepted));
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

    /// Validates and encodes every line; `(index, url)` of distinct URLs.
    fn prepare(&self, objects: &[String]) -> Result<Vec<(usize, String)>, BatchError> {
        prepare(self.operation.object_type(), objects).map_err(BatchError::Invalid)
    }

    /// Polls every accepted batch's tasks until each is done or the timeout
    /// passes, then reports each URL.
    async fn poll_until_done(
        &self,
        reports: &mut [UrlReport],
        batches: Vec<(Vec<usize>, Vec<String>)>,
        mut stopped: watch::Receiver<bool>,
        progress: &(impl Fn(Progress) + Sync),
    ) {
        let deadline = Instant::now() + self.timeout;
        let mut pending: Vec<(Vec<usize>, Vec<String>)> = batches;
        // Failed entries found so far, by task.
        let mut failures: HashMap<String, Vec<(String, String)>> = HashMap::new();
        let mut absent_before = HashSet::new();
        let mut round = 0;
        while !pending.is_empty() {
            let unfinished: HashSet<&String> = pending.iter().flat_map(|(_, tasks)| tasks).collect();
            let unfinished: Vec<String> = unfinished
                .into_iter()
                .filter(|task| !failures.contains_key(*task))
                .cloned()
                .collect();
            match self.finished_tasks(&unfinished, &mut absent_before).await {
                Ok(finished) => failures.extend(finished),
                Err(error) => tracing::warn!(%error, "could not read the tasks' states; will ask again"),
            }
            pending.retain(|(members, tasks)| {
                if !tasks.iter().all(|task| failures.contains_key(task)) {
                    return true;
                }
                let failed: HashMap<&str, &str> = tasks
                    .iter()
                    .flat_map(|task| &failures[task])
                    .map(|(path, reason)| (path.as_str(), reason.as_str()))
                    .collect();
                let mut failed_here = 0;
                for &member in members {
                    let report = &mut reports[member];
                    report.outcome = match failed.get(report.url.as_str()) {
                        Some(reason) => {
                            failed_here += 1;
                            Outcome::Failed {
                                reason: if reason.is_empty() {
                                    "the task failed".to_owned()
                                } else {
                                    (*reason).to_owned()
                                },
                            }
                        }
                        None => Outcome::Complete,
                    };
                }
                progress(Progress::Completed(members.len() - failed_here));
                if failed_here > 0 {
                    progress(Progress::Failed(failed_here));
                }
                false
            });
            let now = Instant::now();
            if pending.is_empty() || now >= deadline || *stopped.borrow() {
                break;
            }
            let delay = self.poll.delay(round, None).min(deadline - now);
            round += 1;
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stopped.wait_for(|stopped| *stopped) => {}
            }
        }
        if *stopped.borrow() {
            return; // stopped, not timed out: what is pending stays `Accepted`
        }
        for (members, _) in pending {
            for &member in &members {
                reports[member].outcome = Outcome::TimedOut;
            }
            progress(Progress::Failed(members.len()));
        }
    }

    /// Which of `unfinished` tasks are done, with their failed entries as
    /// `(object path, reason)`.
    ///
    /// Task queries are rate-limited (about 5 a second), so this asks in
    /// whichever way takes fewer calls: one query per task, or listing every
    /// refreshing entry of the account, 100 a page. Entries can shift between
    /// pages while they are listed, so a listing counts a task as done only
    /// once two listings in a row lack it.
    async fn finished_tasks(
        &self,
        unfinished: &[String],
        absent_before: &mut HashSet<String>,
    ) -> Result<HashMap<String, Vec<(String, String)>>, AlibabaError> {
        let refreshing = TaskFilter {
            status: Some(TaskStatus::Refreshing),
            ..TaskFilter::default()
        };
        let first = self.client.tasks_page(&refreshing, 1, PAGE).await?;
        let done: Vec<String> = if pages(first.total_count) <= unfinished.len() as u64 {
            let mut still: HashSet<String> = first.tasks.into_iter().map(|task| task.task_id).collect();
            for page in 2..=pages(first.total_count) {
                let more = self.client.tasks_page(&refreshing, page as u32, PAGE).await?;
                still.extend(more.tasks.into_iter().map(|task| task.task_id));
            }
            let absent: HashSet<String> = unfinished
                .iter()
                .filter(|task| !still.contains(*task))
                .cloned()
                .collect();
            let confirmed = absent.intersection(absent_before).cloned().collect();
            *absent_before = absent;
            confirmed
        } else {
            let checks = futures_util::stream::iter(unfinished)
                .map(|task| async move {
                    let filter = TaskFilter {
                        task_id: Some(task.clone()),
                        status: Some(TaskStatus::Refreshing),
                        ..TaskFilter::default()
                    };
                    let page = self.client.tasks_page(&filter, 1, 1).await?;
                    Ok::<_, AlibabaError>((page.total_count == 0).then(|| task.clone()))
                })
                .buffer_unordered(4)
                .collect::<Vec<_>>()
                .await;
            let mut done = Vec::new();
            for check in checks {
                done.extend(check?);
            }
            done
        };
        if done.is_empty() {
            return Ok(HashMap::new());
        }
        let mut failed: HashMap<String, Vec<(String, String)>> =
            done.iter().map(|task| (task.clone(), Vec::new())).collect();
        for task in self.failed_entries(&done).await? {
            if let Some(entries) = failed.get_mut(&task.task_id) {
                entries.push((task.object_path, task.description));
            }
        }
        Ok(failed)
    }

    /// The failed entries of these tasks: the account's failed tasks listed
    /// when that takes fewer calls than asking task by task.
    async fn failed_entries(&self, tasks: &[String]) -> Result<Vec<super::Task>, AlibabaError> {
        let failed = TaskFilter {
            status: Some(TaskStatus::Failed),
            ..TaskFilter::default()
        };
        let first = self.client.tasks_page(&failed, 1, PAGE).await?;
        let mut entries = Vec::new();
        if pages(first.total_count) <= tasks.len() as u64 {
            entries.extend(first.tasks);
            for page in 2..=pages(first.total_count) {
                entries.extend(self.client.tasks_page(&failed, page as u32, PAGE).await?.tasks);
            }
        } else {
            for task in tasks {
                let filter = TaskFilter {
                    task_id: Some(task.clone()),
                    ..failed.clone()
                };
                entries.extend(self.client.tasks(&filter).await?);
            }
        }
        entries.retain(|entry| entry.status == TaskStatus::Failed);
        Ok(entries)
    }
}

/// Task entries per page when listing.
const PAGE: u32 = 100;

fn pages(entries: u64) -> u64 {
    entries.div_ceil(u64::from(PAGE))
}

/// Checks every line as a run of `operation` would, without sending
/// anything: what is wrong with each invalid one (empty when all are fine).
/// The rules are [`check_url`](crate::purge::check_url)'s, plus those of the
/// object type.
pub fn check_objects(operation: &Operation, objects: &[String]) -> Vec<InvalidObject> {
    prepare(operation.object_type(), objects).err().unwrap_or_default()
}

/// Validates and encodes every line; `(index, url)` of distinct URLs.
fn prepare(object_type: Option<ObjectType>, objects: &[String]) -> Result<Vec<(usize, String)>, Vec<InvalidObject>> {
    let prepared = crate::purge::check_each(objects, "nothing to send", |object| {
        prepare_url(object_type, object.trim())
    })?;
    let mut seen = HashSet::new();
    Ok(prepared
        .into_iter()
        .filter(|(_, url)| seen.insert(url.clone()))
        .collect())
}

/// The URL to send for one line, or why the line cannot be sent. URLs are
/// parsed and re-serialized, which percent-encodes spaces and non-ASCII
/// characters and leaves existing `%XX` escapes alone; regexes are sent as given.
fn prepare_url(object_type: Option<ObjectType>, line: &str) -> Result<String, String> {
    if object_type == Some(ObjectType::Regex) {
        // A pattern is no URL: only its scheme and host are checked.
        return crate::purge::check_scheme_and_host(line).map(|()| line.to_owned());
    }
    let url = crate::purge::check_url(line)?;
    if object_type == Some(ObjectType::Directory) && !url.path().ends_with('/') {
        return Err("a directory must end with `/`".into());
    }
    Ok(url.into())
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
            outcome: Outcome::NotSubmitted,
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
