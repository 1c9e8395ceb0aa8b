//! Purging for the team: the server holds the CDN credentials, queues the
//! purges its callers ask for in its index, and runs them one at a time
//! across replicas through the same [`Purger`] the command line uses, so
//! every caller shares the account's rate limits. Each target and object is
//! recorded as it is settled: a replica that dies mid-purge leaves it to
//! another, which resumes without sending anything twice.

use std::sync::Arc;
use std::time::Duration;

use edgecache_purge::{ObjectKind, Objects, PurgeRunError, Purger, Report, Settled, Status, Target, Verify};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::index::{Index, IndexError, Lease, PurgeLine, PurgeRow};

/// A line's status while its call is under way: recorded before the call,
/// so the replica that takes over a purge whose runner died knows it may
/// have reached the CDN.
const SENDING: &str = "sending";

/// Why an object sent by a replica that died is not sent again.
const IN_DOUBT: &str = "in doubt: the replica sending it stopped before the CDN's answer was recorded, \
                        and it is not sent twice; `edgecache purge verify` checks it, or purge it again";

/// How often a replica with nothing to run looks for purges queued elsewhere.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// What a caller asks for: `POST /v1/purges`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PurgeRequest {
    /// `url`, `prefix`, `tag`, `host`, `cpcode`, `regex` or `everything`.
    pub kind: ObjectKind,
    pub objects: Vec<String>,
    /// Only these targets, by name; all when absent.
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    /// Then check at each target that each URL is gone.
    #[serde(default)]
    pub verify: bool,
}

/// Why a purge was run: a caller's request, or a resource's new content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Cause {
    /// A caller asked.
    Request {
        /// Whether the caller asked for verification.
        #[serde(default)]
        verify: bool,
    },
    /// A resource's content changed.
    Change {
        resource: String,
        from_version: Option<String>,
        to_version: String,
    },
}

/// Why a request can't be queued.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("this server has no purge targets: start it with --purge-targets FILE")]
    NoTargets,
    #[error("no purge target is named {0:?}; this server has {1}")]
    UnknownTarget(String, String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// The server's purge queue and its runner.
pub(crate) struct Purges {
    index: Arc<dyn Index>,
    targets: Vec<Arc<dyn Target>>,
    lease: Lease,
    wake: Notify,
    /// How long finished purges stay in the history.
    history: Duration,
}

/// How often finished purges past the history's retention are deleted.
const FORGET_EVERY: Duration = Duration::from_secs(3600);

impl Purges {
    pub(crate) fn new(
        index: Arc<dyn Index>,
        targets: Vec<Arc<dyn Target>>,
        lease_ttl: Duration,
        history: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            index,
            targets,
            lease: Lease::new(lease_ttl),
            wake: Notify::new(),
            history,
        })
    }

    /// Whether the server was given purge targets.
    pub(crate) fn has_targets(&self) -> bool {
        !self.targets.is_empty()
    }

    /// The targets' names, in the order a purge reaches them.
    pub(crate) fn target_names(&self) -> Vec<String> {
        self.purger(None).targets().iter().map(|target| target.name()).collect()
    }

    /// A purger over the targets named (all when `None`).
    fn purger(&self, only: Option<&[String]>) -> Purger {
        let mut builder = Purger::builder();
        for target in &self.targets {
            if only.is_none_or(|only| only.contains(&target.name())) {
                builder = builder.target(target.clone());
            }
        }
        builder.build()
    }

    /// Checks and queues a purge; its id.
    pub(crate) async fn enqueue(&self, request: PurgeRequest, who: &str) -> Result<String, Refused> {
        if !self.has_targets() {
            return Err(Refused::NoTargets);
        }
        if let Some(only) = &request.targets {
            let names = self.target_names();
            if let Some(unknown) = only.iter().find(|name| !names.contains(name)) {
                return Err(Refused::UnknownTarget(unknown.clone(), names.join(", ")));
            }
        }
        let objects = Objects::new(request.kind, request.objects.clone());
        match self.purger(request.targets.as_deref()).validate(&objects) {
            Ok(()) => {}
            Err(PurgeRunError::Invalid(invalid)) => {
                let first = &invalid[0];
                return Err(Refused::Invalid(format!(
                    "objects[{}] {:?}: {} ({} invalid; nothing queued)",
                    first.index,
                    first.object,
                    first.reason,
                    invalid.len()
                )));
            }
            Err(error) => return Err(Refused::Invalid(error.to_string())),
        }
        let cause = Cause::Request { verify: request.verify };
        self.add(who, &cause, request.kind, request.objects, request.targets, None)
            .await
            .map(|(id, _)| id)
            .map_err(Refused::from)
    }

    /// Queues a purge of a resource's URL and cache tags after its content
    /// changed, once per new version across replicas.
    pub(crate) async fn on_change(
        &self,
        url: String,
        cache_tags: Vec<String>,
        resource: &str,
        from_version: Option<String>,
        to_version: &str,
    ) -> Result<(), IndexError> {
        if self.targets.is_empty() {
            return Ok(());
        }
        let cause = Cause::Change {
            resource: resource.to_owned(),
            from_version,
            to_version: to_version.to_owned(),
        };
        let key = format!("{resource}:{to_version}");
        let (_, queued) = self
            .add(
                "server",
                &cause,
                ObjectKind::Url,
                vec![url],
                None,
                Some(format!("{key}:url")),
            )
            .await?;
        if queued && !cache_tags.is_empty() {
            self.add(
                "server",
                &cause,
                ObjectKind::Tag,
                cache_tags,
                None,
                Some(format!("{key}:tags")),
            )
            .await?;
        }
        Ok(())
    }

    async fn add(
        &self,
        who: &str,
        cause: &Cause,
        kind: ObjectKind,
        objects: Vec<String>,
        targets: Option<Vec<String>>,
        change_key: Option<String>,
    ) -> Result<(String, bool), IndexError> {
        let id = uuid::Uuid::now_v7().to_string();
        let row = PurgeRow {
            id: id.clone(),
            created_at: Timestamp::now(),
            who: who.to_owned(),
            cause: serde_json::to_string(cause).unwrap_or_default(),
            kind: kind.as_str().to_owned(),
            objects: serde_json::to_string(&objects).unwrap_or_default(),
            targets: serde_json::to_string(&targets).unwrap_or_default(),
            status: String::new(),
            finished_at: None,
            report: None,
        };
        let queued = self.index.add_purge(row, objects, change_key).await?;
        if queued {
            self.wake.notify_one();
        }
        Ok((id, queued))
    }

    /// Runs queued purges until `stop`: this replica's share of the queue.
    /// Also deletes finished purges older than the history's retention.
    pub(crate) fn run(self: Arc<Self>, stop: watch::Receiver<bool>) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(self.run_inner(stop))
    }

    async fn run_inner(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut forgotten_at: Option<tokio::time::Instant> = None;
        loop {
            if *stop.borrow() {
                return;
            }
            if forgotten_at.is_none_or(|at| at.elapsed() >= FORGET_EVERY) {
                forgotten_at = Some(tokio::time::Instant::now());
                let before = Timestamp::now()
                    .checked_sub(jiff::SignedDuration::try_from(self.history).unwrap_or(jiff::SignedDuration::MAX))
                    .unwrap_or(Timestamp::MIN);
                match self.index.forget_purges(before).await {
                    Ok(0) => {}
                    Ok(count) => tracing::info!(count, "purges past the history's retention deleted"),
                    Err(error) => tracing::debug!(%error, "could not delete old purges"),
                }
            }
            if self.targets.is_empty() {
                tokio::select! {
                    _ = stop.changed() => {}
                    () = tokio::time::sleep(FORGET_EVERY) => {}
                }
                continue;
            }
            match self.index.claim_purge(&self.lease, Timestamp::now()).await {
                Ok(Some((row, settled))) => {
                    self.execute(row, settled).await;
                    continue;
                }
                Ok(None) => {}
                Err(error) => tracing::debug!(%error, "could not look for purges"),
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Runs one claimed purge to its end, recording lines as they settle
    /// and renewing the lease meanwhile.
    fn execute(self: &Arc<Self>, row: PurgeRow, settled: Vec<PurgeLine>) -> futures_util::future::BoxFuture<'_, ()> {
        // Boxed: the compiler can't prove this future `Send` through the
        // purger's borrowed futures otherwise.
        Box::pin(self.execute_inner(row, settled))
    }

    async fn execute_inner(self: &Arc<Self>, row: PurgeRow, settled: Vec<PurgeLine>) {
        let id = row.id.clone();
        tracing::info!(purge = %id, resumed = settled.len(), "running purge");
        let (kind, objects, targets, verify) = match parse(&row) {
            Ok(parsed) => parsed,
            Err(reason) => {
                self.finish(&id, "failed", serde_json::json!({ "error": reason }), Vec::new())
                    .await;
                return;
            }
        };
        let earlier: Vec<Settled> = settled
            .iter()
            .filter_map(|line| {
                let (status, detail) = match line.status.as_str() {
                    "done" => (Status::Done, line.detail.clone()),
                    "accepted" => (Status::Accepted, line.detail.clone()),
                    SENDING => (Status::Failed, IN_DOUBT.to_owned()),
                    _ => return None,
                };
                Some(Settled {
                    target: line.target.clone(),
                    object: line.object.clone(),
                    status,
                    detail,
                    id: line.carrier.clone(),
                })
            })
            .collect();
        let (lost, lost_signal) = watch::channel(false);
        let ledger = Ledger {
            index: self.index.clone(),
            lease: self.lease.clone(),
            id: id.clone(),
            lost,
        };
        let recorder = {
            let ledger = ledger.clone();
            move |records: Vec<Settled>| -> futures_util::future::BoxFuture<'static, ()> {
                let ledger = ledger.clone();
                Box::pin(async move {
                    let lines = records.into_iter().map(settled_line).collect();
                    ledger.write(lines, "could not record a settled purge line").await;
                })
            }
        };
        let intents = {
            let ledger = ledger.clone();
            move |target: &str, objects: Vec<String>| -> futures_util::future::BoxFuture<'static, bool> {
                let (ledger, target) = (ledger.clone(), target.to_owned());
                Box::pin(async move {
                    let lines = objects
                        .into_iter()
                        .map(|object| PurgeLine {
                            target: target.clone(),
                            object,
                            status: SENDING.to_owned(),
                            detail: "sent; the CDN's answer is awaited".to_owned(),
                            carrier: None,
                        })
                        .collect();
                    // Unrecorded, the call must not go: a replica taking
                    // over could not tell it went.
                    ledger
                        .write(lines, "could not record a call before sending it; not sending it")
                        .await
                })
            }
        };
        // The lease is renewed while the purge runs; losing it stops the run.
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ledger.lease.ttl / 3).await;
                ledger
                    .write(Vec::new(), "could not renew a running purge's lease")
                    .await;
                if *ledger.lost.borrow() {
                    return;
                }
            }
        });
        let mut stop_signal = lost_signal.clone();
        let purger = {
            let mut builder = Purger::builder()
                .external_journal(earlier, recorder)
                .record_sending(intents)
                .stop_when(async move {
                    let _ = stop_signal.wait_for(|lost| *lost).await;
                });
            for target in self.purger(targets.as_deref()).targets() {
                builder = builder.target(target.clone());
            }
            builder.build()
        };
        let result = purger.purge(Objects::new(kind, objects)).await;
        let verification = match (&result, verify) {
            (Ok(report), true) => purger.verify(report, Verify::default()).await.ok(),
            _ => None,
        };
        renewer.abort();
        if *lost_signal.borrow() {
            tracing::warn!(purge = %id, "another replica took this purge over; leaving it to that one");
            return;
        }
        match result {
            Ok(report) => {
                let status = if report.is_success() { "done" } else { "failed" };
                let lines = report_lines(&report);
                let mut document = serde_json::json!({ "purge": report });
                if let Some(verification) = verification {
                    document["verification"] = serde_json::to_value(&verification).unwrap_or_default();
                }
                self.finish(&id, status, document, lines).await;
            }
            Err(error) => {
                self.finish(
                    &id,
                    "failed",
                    serde_json::json!({ "error": error.to_string() }),
                    Vec::new(),
                )
                .await;
            }
        }
    }

    async fn finish(&self, id: &str, status: &str, report: serde_json::Value, lines: Vec<PurgeLine>) {
        if let Err(error) = self
            .index
            .finish_purge(id, &self.lease, status, report.to_string(), lines, Timestamp::now())
            .await
        {
            tracing::error!(%error, purge = %id, "could not record the end of a purge");
        }
    }
}

/// Where a running purge's lines are written, under its lease.
#[derive(Clone)]
struct Ledger {
    index: Arc<dyn Index>,
    lease: Lease,
    id: String,
    /// Set once the lease is lost: another replica runs the purge now.
    lost: watch::Sender<bool>,
}

impl Ledger {
    /// Writes `lines` (none: renews the lease); whether they were written.
    /// `failure` is what the log says when the index fails.
    async fn write(&self, lines: Vec<PurgeLine>, failure: &'static str) -> bool {
        match self.index.settle_purge(&self.id, &self.lease, lines).await {
            Ok(true) => true,
            Ok(false) => {
                self.lost.send_replace(true);
                false
            }
            Err(error) => {
                tracing::warn!(%error, purge = %self.id, "{failure}");
                false
            }
        }
    }
}

/// A queued purge's kind, objects, targets and whether to verify.
type Parsed = (ObjectKind, Vec<String>, Option<Vec<String>>, bool);

fn parse(row: &PurgeRow) -> Result<Parsed, String> {
    let kind: ObjectKind =
        serde_json::from_value(serde_json::Value::String(row.kind.clone())).map_err(|error| error.to_string())?;
    let objects: Vec<String> = serde_json::from_str(&row.objects).map_err(|error| error.to_string())?;
    let targets: Option<Vec<String>> = serde_json::from_str(&row.targets).map_err(|error| error.to_string())?;
    let verify = matches!(
        serde_json::from_str::<Cause>(&row.cause),
        Ok(Cause::Request { verify: true })
    );
    Ok((kind, objects, targets, verify))
}

fn settled_line(settled: Settled) -> PurgeLine {
    PurgeLine {
        target: settled.target,
        object: settled.object,
        status: settled.status.as_str().to_owned(),
        detail: settled.detail,
        carrier: settled.id,
    }
}

fn report_lines(report: &Report) -> Vec<PurgeLine> {
    report
        .lines()
        .map(|line| PurgeLine {
            target: line.target.clone(),
            object: line.object.clone(),
            status: line.outcome.status.as_str().to_owned(),
            detail: line.outcome.detail.clone(),
            carrier: line.outcome.id.clone(),
        })
        .collect()
}
