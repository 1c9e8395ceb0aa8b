//! The purger: every target, in layer order, one report.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::journal::{self, Journal, JournalError};
use super::target::ProgressFn;
use super::{
    Event, InvalidObject, ObjectKind, ObjectReport, Objects, Outcome, Progress, Report, Status, Target, TargetReport,
};

/// Why a run did not start. Nothing was sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PurgeRunError {
    /// Some objects can't be sent; each says why (and for which target).
    #[error("{} invalid object(s), nothing sent; first: {:?}: {}", .0.len(), .0[0].object, .0[0].reason)]
    Invalid(Vec<InvalidObject>),
    /// No target was given.
    #[error("no target to purge: give the purger at least one")]
    NoTargets,
    /// The journal could not be used.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Purges objects from every target, layer by layer, and reports each
/// object at each target. Made by [`Purger::builder`].
///
/// Targets are purged from the layer nearest the origin to the one nearest
/// the user ([`Layer`](super::Layer)): each layer starts once the one before it has
/// confirmed, including waiting out a CDN's own estimate. A target that
/// fails fails its own objects; later layers are purged anyway (the report
/// says the order was broken) unless [`PurgerBuilder::stop_on_failure`].
pub struct Purger {
    targets: Vec<Arc<dyn Target>>,
    progress: Option<ProgressFn>,
    parallel: bool,
    stop_on_failure: bool,
    max_confirm_wait: Duration,
    journal: Option<(PathBuf, bool)>,
    /// A journal kept elsewhere (a database): what an earlier run settled,
    /// and where new records go.
    external: Option<(Vec<Settled>, RecordFn)>,
    /// Where the objects each call is about to send are recorded first.
    sending: Option<SendingRecordFn>,
    // In a mutex only so that the purger is `Sync` and its run future `Send`.
    stop: std::sync::Mutex<Option<BoxFuture<'static, ()>>>,
}

impl std::fmt::Debug for Purger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.targets.iter().map(|target| target.name()).collect();
        f.debug_struct("Purger")
            .field("targets", &names)
            .field("parallel", &self.parallel)
            .field("stop_on_failure", &self.stop_on_failure)
            .finish_non_exhaustive()
    }
}

/// Configures a [`Purger`].
pub struct PurgerBuilder {
    purger: Purger,
}

impl Purger {
    /// A purger with no targets yet.
    pub fn builder() -> PurgerBuilder {
        PurgerBuilder {
            purger: Purger {
                targets: Vec::new(),
                progress: None,
                parallel: false,
                stop_on_failure: false,
                max_confirm_wait: Duration::from_secs(600),
                journal: None,
                external: None,
                sending: None,
                stop: std::sync::Mutex::new(None),
            },
        }
    }

    /// The targets, in the order they will be purged.
    pub fn targets(&self) -> &[Arc<dyn Target>] {
        &self.targets
    }
}

impl PurgerBuilder {
    /// Adds a target: a [`CacheMiddleware`](edgecache::CacheMiddleware), a
    /// [`versions::Client`](edgecache_versions::Client), a CDN client, or an
    /// `Arc<dyn Target>`.
    pub fn target(mut self, target: impl Target + 'static) -> Self {
        self.purger.targets.push(Arc::new(target));
        self
    }

    /// Called at each step of the run (for one progress bar across targets).
    pub fn on_progress(mut self, progress: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.purger.progress = Some(Arc::new(progress));
        self
    }

    /// Purges every target at once instead of layer by layer. Faster, but a
    /// CDN edge may refetch a stale copy from a shared cache not yet purged.
    pub fn parallel(mut self, parallel: bool) -> Self {
        self.purger.parallel = parallel;
        self
    }

    /// When a layer fails, sends nothing to the layers after it (their
    /// objects are reported `not_sent`). Default: they are purged anyway.
    pub fn stop_on_failure(mut self, stop: bool) -> Self {
        self.purger.stop_on_failure = stop;
        self
    }

    /// The longest wait for a CDN's estimate before the next layer starts.
    /// Default: 10 minutes.
    pub fn max_confirm_wait(mut self, wait: Duration) -> Self {
        self.purger.max_confirm_wait = wait;
        self
    }

    /// Records what each target accepted in a journal file. With `resume`,
    /// what an earlier run recorded is reported from it and not sent again;
    /// without, a journal that already has records is an error.
    pub fn journal(mut self, path: impl Into<PathBuf>, resume: bool) -> Self {
        self.purger.journal = Some((path.into(), resume));
        self
    }

    /// Keeps the run's journal elsewhere (a database shared by replicas):
    /// `earlier` is what an earlier run of the same purge settled, reported
    /// from it and not sent again; `record` is handed each batch of newly
    /// settled records (a few times a second, and as each target returns)
    /// and resolves once they are kept. Replaces [`journal`](Self::journal).
    pub fn external_journal(
        mut self,
        earlier: Vec<Settled>,
        record: impl Fn(Vec<Settled>) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        self.purger.external = Some((earlier, Arc::new(record)));
        self
    }

    /// Records what each call to a vendor is about to send before it is
    /// sent: `record` gets the target's name and the call's objects, and
    /// the call waits until it resolves, and is sent only if it answers
    /// `true` (`false`: they could not be recorded). With [`external_journal`](Self::external_journal),
    /// a run that dies mid-call leaves these records behind; hand them to
    /// the run that takes over as [`Settled`] with [`Status::Failed`] and
    /// the reason, and it reports them in doubt instead of sending them
    /// again.
    pub fn record_sending(
        mut self,
        record: impl Fn(&str, Vec<String>) -> BoxFuture<'static, bool> + Send + Sync + 'static,
    ) -> Self {
        self.purger.sending = Some(Arc::new(record));
        self
    }

    /// Stops the first run when `signal` resolves (on Ctrl-C, say): nothing
    /// more is sent, calls in flight finish and are journaled, and the
    /// report marks what was not sent.
    pub fn stop_when(self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        *self
            .purger
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Box::pin(signal));
        self
    }

    /// The purger, targets sorted by layer (in the order given within one).
    pub fn build(mut self) -> Purger {
        self.purger.targets.sort_by_key(|target| target.layer());
        self.purger
    }
}

/// A journal's first line: a mixed run of this kind of object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct JournalHeader {
    edgecache_purge_journal: u32,
    kind: ObjectKind,
}

impl journal::Header for JournalHeader {
    fn describe(&self) -> String {
        format!("{} purge", self.kind)
    }
}

/// A journal record: an object a target did or accepted, so a resumed run
/// does not send it again. An external journal may also hand back an
/// object an earlier run may have sent without its answer being recorded,
/// as `failed` with the reason: it is reported, not sent again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    /// The target's name.
    pub target: String,
    /// The object as sent.
    pub object: String,
    /// `done` or `accepted` (`failed`: in doubt, see above).
    pub status: Status,
    /// What the target said.
    pub detail: String,
    /// The target's id for what carried it.
    pub id: Option<String>,
}

/// Where an external journal's records go.
type RecordFn = Arc<dyn Fn(Vec<Settled>) -> BoxFuture<'static, ()> + Send + Sync>;
/// Where what a call is about to send is recorded, by target name.
type SendingRecordFn = Arc<dyn Fn(&str, Vec<String>) -> BoxFuture<'static, bool> + Send + Sync>;

/// Where a run's journal records go: a file, or the caller's store.
enum Sink {
    File(Journal),
    External(RecordFn),
}

/// The run's journal: records wait here until the next write (a few times
/// a second, and when each target returns), each (target, object) once.
struct JournalWriter {
    sink: Sink,
    pending: std::sync::Mutex<Pending>,
}

/// Records not written yet, and every (target, object) ever added.
#[derive(Default)]
struct Pending {
    records: Vec<Settled>,
    seen: HashSet<(String, String)>,
}

/// How often settled objects are written to the journal.
const JOURNAL_EVERY: Duration = Duration::from_millis(250);

impl JournalWriter {
    fn add(&self, target: &str, objects: &[String], outcome: &Outcome) {
        if !matches!(outcome.status, Status::Done | Status::Accepted) {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Pending { records, seen } = &mut *pending;
        for object in objects {
            if seen.insert((target.to_owned(), object.clone())) {
                records.push(Settled {
                    target: target.to_owned(),
                    object: object.clone(),
                    status: outcome.status,
                    detail: outcome.detail.clone(),
                    id: outcome.id.clone(),
                });
            }
        }
    }

    async fn flush(&self) {
        let records = std::mem::take(
            &mut self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .records,
        );
        match &self.sink {
            Sink::File(journal) => {
                if let Err(error) = journal.record_all(&records).await {
                    tracing::error!(%error, "purged, but the journal could not record it");
                }
            }
            Sink::External(record) => {
                if !records.is_empty() {
                    record(records).await;
                }
            }
        }
    }
}

impl Purger {
    /// Purges `objects` from every target that takes their kind. Every
    /// object is checked first, by the shared rules and each target's own:
    /// if any is bad, nothing is sent.
    pub async fn purge(&self, objects: Objects) -> Result<Report, PurgeRunError> {
        let started = Instant::now();
        if self.targets.is_empty() {
            return Err(PurgeRunError::NoTargets);
        }
        let kind = objects.kind();
        let (distinct, duplicates) = self.check(&objects)?;

        let (journal, earlier) = self.open_journal(kind)?;
        let (finished_sender, journal_task) = flush_periodically(journal.clone());

        let signal = self
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let (stop, watcher) = super::call::watch_stop(signal);

        let layers = self.layers();
        let mut reports = Vec::new();
        let mut failed_layers: Vec<String> = Vec::new();
        let mut order_broken = None;
        let layer_count = layers.len();
        for (position, layer) in layers.into_iter().enumerate() {
            let held_back = self.held_back(*stop.borrow(), &failed_layers);
            if held_back.is_none() && !failed_layers.is_empty() && order_broken.is_none() {
                order_broken = Some(format!(
                    "{} failed; later layers were purged anyway and may have refetched a stale copy from it",
                    failed_layers.join(", ")
                ));
            }
            let run = Run {
                kind,
                objects: &distinct,
                earlier: &earlier,
                journal: journal.as_ref(),
                sending: self.sending.as_ref(),
                held_back: held_back.as_deref(),
            };
            // Boxed as `Send` one by one: a lazy iterator of futures makes
            // the whole run future unprovably `Send` to spawn.
            let mut runs: Vec<BoxFuture<'_, TargetReport>> = Vec::with_capacity(layer.len());
            for target in &layer {
                let progress = Progress::new(&target.name(), self.progress.clone(), Some(stop.clone()));
                runs.push(Box::pin(run.target(target.as_ref(), progress)));
            }
            let finished = futures_util::future::join_all(runs).await;
            failed_layers.extend(
                finished
                    .iter()
                    .filter(|report| !report.is_success())
                    .map(|report| report.name.clone()),
            );
            // The next layer starts once this one is done, by the CDN's own estimate.
            if position + 1 < layer_count && !*stop.borrow() {
                self.wait_for_estimate(longest_estimate(&finished), stop.clone()).await;
            }
            reports.extend(finished);
        }
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        let _ = finished_sender.send(true);
        if let Some(task) = journal_task {
            let _ = task.await;
        }
        let stopped = *stop.borrow();
        Ok(Report {
            kind,
            targets: reports,
            duplicates,
            order_broken,
            stopped,
            elapsed: started.elapsed(),
        })
    }

    /// Checks `objects` as [`purge`](Self::purge) would, sending nothing:
    /// every object by the shared rules and each target's own.
    pub fn validate(&self, objects: &Objects) -> Result<(), PurgeRunError> {
        if self.targets.is_empty() {
            return Err(PurgeRunError::NoTargets);
        }
        self.check(objects).map(drop)
    }

    /// The journal, with what an earlier run settled by (target, object).
    fn open_journal(&self, kind: ObjectKind) -> Result<(Option<Arc<JournalWriter>>, Earlier), PurgeRunError> {
        if let Some((earlier, record)) = &self.external {
            let earlier = earlier
                .iter()
                .map(|settled| ((settled.target.clone(), settled.object.clone()), settled.clone()))
                .collect();
            let writer = Arc::new(JournalWriter {
                sink: Sink::External(Arc::clone(record)),
                pending: std::sync::Mutex::default(),
            });
            return Ok((Some(writer), earlier));
        }
        let Some((path, resume)) = &self.journal else {
            return Ok((None, HashMap::new()));
        };
        let header = JournalHeader {
            edgecache_purge_journal: 1,
            kind,
        };
        let (journal, records) = Journal::open::<_, Settled>(path, &header, *resume)?;
        let earlier = records
            .into_iter()
            .map(|done| ((done.target.clone(), done.object.clone()), done))
            .collect();
        let writer = Arc::new(JournalWriter {
            sink: Sink::File(journal),
            pending: std::sync::Mutex::default(),
        });
        Ok((Some(writer), earlier))
    }

    /// The targets in layers, in order: consecutive targets of one layer
    /// together (all in one with `parallel`).
    fn layers(&self) -> Vec<Vec<&Arc<dyn Target>>> {
        let mut layers: Vec<Vec<&Arc<dyn Target>>> = Vec::new();
        for target in &self.targets {
            match layers.last_mut() {
                Some(layer) if self.parallel || layer[0].layer() == target.layer() => layer.push(target),
                _ => layers.push(vec![target]),
            }
        }
        layers
    }

    /// Why nothing is sent to the next layer, if nothing is.
    fn held_back(&self, stopped: bool, failed_layers: &[String]) -> Option<String> {
        if stopped {
            Some("the run was stopped first".to_owned())
        } else if self.stop_on_failure && !failed_layers.is_empty() {
            Some(format!(
                "an earlier layer failed ({}), and the run stops on failure",
                failed_layers.join(", ")
            ))
        } else {
            None
        }
    }

    /// Waits the longest estimate a target of the layer just finished gave
    /// for its new purges (at most `max_confirm_wait`), or until stopped.
    async fn wait_for_estimate(&self, longest_estimate: u64, mut stop: watch::Receiver<bool>) {
        if longest_estimate == 0 {
            return;
        }
        let wait = Duration::from_secs(longest_estimate).min(self.max_confirm_wait);
        Progress::new("", self.progress.clone(), None).note(format!(
            "waiting {}s for the CDN's estimate before the next layer",
            wait.as_secs()
        ));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|stopped| *stopped) => {}
        }
    }

    /// The distinct objects to send, `(index in the list, form to send)`,
    /// and how many lines repeated an earlier one; or every reason an object
    /// can't be sent.
    fn check(&self, objects: &Objects) -> Result<(Vec<(usize, String)>, usize), PurgeRunError> {
        let kind = objects.kind();
        let taking: Vec<&Arc<dyn Target>> = self
            .targets
            .iter()
            .filter(|target| target.takes(kind).is_ok())
            .collect();
        let checked = super::check_each(objects.items(), "nothing to purge", |object| {
            let object = object.trim();
            let prepared = super::check_object(kind, object)?;
            for target in &taking {
                target
                    .check(kind, &prepared)
                    .map_err(|reason| format!("{}: {reason}", target.name()))?;
            }
            Ok(prepared)
        })
        .map_err(PurgeRunError::Invalid)?;
        let total = checked.len();
        let mut seen = HashSet::new();
        let distinct: Vec<(usize, String)> = checked
            .into_iter()
            .filter(|(_, object)| seen.insert(object.clone()))
            .collect();
        let duplicates = total - distinct.len();
        Ok((distinct, duplicates))
    }
}

/// The longest estimate a layer's targets gave for their new purges, in seconds.
fn longest_estimate(finished: &[TargetReport]) -> u64 {
    finished
        .iter()
        .flat_map(|report| &report.objects)
        .filter(|line| line.outcome.status == Status::Accepted && !line.resumed)
        .filter_map(|line| line.outcome.estimated_seconds)
        .max()
        .unwrap_or(0)
}

/// What an earlier run journaled, by (target, object).
type Earlier = HashMap<(String, String), Settled>;

/// Writes what targets settle as they go, so a run killed halfway loses at
/// most the last quarter second; a send on the sender flushes once more
/// and ends the task.
fn flush_periodically(
    journal: Option<Arc<JournalWriter>>,
) -> (watch::Sender<bool>, Option<tokio::task::JoinHandle<()>>) {
    let (finished_sender, mut finished) = watch::channel(false);
    let task = journal.map(|writer| {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(JOURNAL_EVERY) => writer.flush().await,
                    _ = finished.changed() => {
                        writer.flush().await;
                        break;
                    }
                }
            }
        })
    });
    (finished_sender, task)
}

/// What every target of a layer shares in a run.
#[derive(Clone, Copy)]
struct Run<'a> {
    kind: ObjectKind,
    /// `(index in the list, form to send)`, distinct.
    objects: &'a [(usize, String)],
    /// What an earlier run journaled, by (target, object).
    earlier: &'a Earlier,
    journal: Option<&'a Arc<JournalWriter>>,
    sending: Option<&'a SendingRecordFn>,
    /// Why nothing is sent to this layer, if nothing is.
    held_back: Option<&'a str>,
}

impl Run<'_> {
    async fn target(self, target: &dyn Target, progress: Progress) -> TargetReport {
        let name = target.name();
        let mut report = TargetReport {
            name: name.clone(),
            layer: target.layer(),
            started_at: None,
            finished_at: None,
            calls: 0,
            objects: Vec::with_capacity(self.objects.len()),
        };
        if let Err(reason) = target.takes(self.kind) {
            report.objects = self
                .objects
                .iter()
                .map(|(index, object)| line(&name, *index, object, false, Outcome::skipped(reason.to_string())))
                .collect();
            return report;
        }
        let (mut lines, to_send) = self.resumed(&name);
        if let Some(reason) = self.held_back {
            for &at in &to_send {
                let (index, object) = &self.objects[at];
                lines[at] = Some(line(&name, *index, object, false, Outcome::not_sent(reason)));
            }
            report.objects = lines.into_iter().flatten().collect();
            return report;
        }
        let resumed = self.objects.len() - to_send.len();
        progress.emit_started(self.objects.len());
        if resumed > 0 {
            progress.finished(resumed, 0);
        }
        if !to_send.is_empty() {
            report.started_at = Some(SystemTime::now());
            report.calls = self.send(target, &name, progress, &to_send, &mut lines).await;
            report.finished_at = Some(SystemTime::now());
        }
        report.objects = lines.into_iter().flatten().collect();
        report
    }

    /// Each object's line where an earlier run settled it for the target
    /// `name`, and the positions of those still to send.
    fn resumed(&self, name: &str) -> (Vec<Option<ObjectReport>>, Vec<usize>) {
        let mut lines: Vec<Option<ObjectReport>> = vec![None; self.objects.len()];
        let mut to_send = Vec::new();
        for (at, (index, object)) in self.objects.iter().enumerate() {
            match self.earlier.get(&(name.to_owned(), object.clone())) {
                Some(done) => {
                    let mut outcome = match done.status {
                        Status::Accepted => Outcome::accepted(None, done.detail.clone()),
                        Status::Done => Outcome::done(done.detail.clone()),
                        _ => Outcome::failed(done.detail.clone(), false),
                    };
                    outcome.id = done.id.clone();
                    lines[at] = Some(line(name, *index, object, true, outcome));
                }
                None => to_send.push(at),
            }
        }
        (lines, to_send)
    }

    /// Purges the objects at `to_send` from the target and writes their
    /// lines, journaling each as it settles; how many calls it took.
    async fn send(
        &self,
        target: &dyn Target,
        name: &str,
        progress: Progress,
        to_send: &[usize],
        lines: &mut [Option<ObjectReport>],
    ) -> usize {
        let sending: Vec<String> = to_send.iter().map(|&at| self.objects[at].1.clone()).collect();
        let progress = match self.journal {
            Some(writer) => {
                let (writer, target_name) = (Arc::clone(writer), name.to_owned());
                progress.with_settled(Arc::new(move |objects, outcome| {
                    writer.add(&target_name, objects, outcome);
                }))
            }
            None => progress,
        };
        let progress = match self.sending {
            Some(record) => {
                let (record, target_name) = (Arc::clone(record), name.to_owned());
                progress.with_sending(Arc::new(move |objects| record(&target_name, objects.to_vec())))
            }
            None => progress,
        };
        let mut outcomes = target.purge(self.kind, &sending, &progress).await.into_iter();
        progress.flush();
        for &at in to_send {
            let (index, object) = &self.objects[at];
            let outcome = outcomes
                .next()
                .unwrap_or_else(|| Outcome::failed("the target reported nothing for this object", true));
            // What the target did not settle as it went.
            if let Some(writer) = self.journal {
                writer.add(name, std::slice::from_ref(object), &outcome);
            }
            lines[at] = Some(line(name, *index, object, false, outcome));
        }
        if let Some(writer) = self.journal {
            writer.flush().await;
        }
        progress.calls()
    }
}

/// One object's line in a target's report.
fn line(target: &str, index: usize, object: &str, resumed: bool, outcome: Outcome) -> ObjectReport {
    ObjectReport {
        target: target.to_owned(),
        object: object.to_owned(),
        index,
        resumed,
        outcome,
    }
}
