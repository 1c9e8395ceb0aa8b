//! One trait for a layer that can be invalidated.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use super::{EdgeProbe, Event, ObjectKind, Outcome, Verdict};

/// Why a [`Target`] refuses a kind of object, or one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The target has no purge of this kind: its objects are skipped
    /// there, and the report says why.
    #[error("{0}")]
    Unsupported(std::borrow::Cow<'static, str>),
    /// The object breaks one of the target's own rules (its vendor would
    /// refuse it): nothing is sent to any target.
    #[error("{0}")]
    Invalid(String),
}

/// A kind a target has no purge for, said in a fixed sentence.
impl From<&'static str> for Refusal {
    fn from(reason: &'static str) -> Self {
        Refusal::Unsupported(reason.into())
    }
}

/// Where a target sits between the origin and the user. A [`Purger`](super::Purger)
/// purges the layers in this order, each once the one before it has
/// confirmed: otherwise a CDN edge could refetch the stale copy from a
/// shared cache not yet purged, and a program's cache from the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Nearest the origin: the versioned server, caches shared through Redis.
    Shared,
    /// CDN edges.
    Edge,
    /// Nearest the user: a program's own cache, in memory or in SQLite.
    Local,
}

impl Layer {
    /// The layer as reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Shared => "shared",
            Layer::Edge => "edge",
            Layer::Local => "local",
        }
    }
}

/// A run's progress callback.
pub(crate) type ProgressFn = Arc<dyn Fn(&Event) + Send + Sync>;
/// Where a run keeps what targets settle, for its journal.
pub(crate) type SettledFn = Arc<dyn Fn(&[String], &Outcome) + Send + Sync>;
/// Where a run records what a target is about to send, before it does.
/// It answers whether to send.
pub(crate) type SendingFn = Arc<dyn Fn(&[String]) -> futures_util::future::BoxFuture<'static, bool> + Send + Sync>;

/// A target's view of the run: it reports progress with
/// [`Progress::finished`] as batches complete, and asks
/// [`Progress::is_stopped`] before sending each (a stopped run sends
/// nothing more; calls in flight finish).
#[derive(Clone)]
pub struct Progress {
    target: Arc<str>,
    callback: Option<ProgressFn>,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// Finished objects not told yet: a target that finishes 20,000 cheap
    /// objects one by one tells the callback a few times a second, not
    /// 20,000 times.
    untold: Arc<std::sync::Mutex<Untold>>,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    settled: Option<SettledFn>,
    sending: Option<SendingFn>,
}

#[derive(Default)]
struct Untold {
    objects: usize,
    failed: usize,
    last_told: Option<std::time::Instant>,
}

/// How often finished objects are told, at most.
const TELL_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Progress {
    pub(crate) fn new(
        target: &str,
        callback: Option<ProgressFn>,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Self {
        Self {
            target: target.into(),
            callback,
            stop,
            untold: Arc::default(),
            calls: Arc::default(),
            settled: None,
            sending: None,
        }
    }

    pub(crate) fn with_settled(mut self, settled: SettledFn) -> Self {
        self.settled = Some(settled);
        self
    }

    pub(crate) fn with_sending(mut self, sending: SendingFn) -> Self {
        self.sending = Some(sending);
        self
    }

    /// A progress that tells no one and is never stopped (for calling a
    /// target directly).
    pub fn none() -> Self {
        Self::new("", None, None)
    }

    /// Whether the run was stopped: send nothing more.
    pub fn is_stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|stop| *stop.borrow())
    }

    /// Resolves when the run is stopped (never, if it can't be).
    pub async fn stopped(&self) {
        match self.stop.clone() {
            Some(mut stop) => {
                if stop.wait_for(|stopped| *stopped).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    pub(crate) fn emit_started(&self, objects: usize) {
        self.emit(&Event::Started {
            target: self.target.to_string(),
            objects,
        });
    }

    /// `objects` more are finished, `failed` of them unsuccessfully.
    pub fn finished(&self, objects: usize, failed: usize) {
        let due = {
            let mut untold = self.untold.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            untold.objects = untold.objects.saturating_add(objects);
            untold.failed = untold.failed.saturating_add(failed);
            let now = std::time::Instant::now();
            untold
                .last_told
                .is_none_or(|last| now.duration_since(last) >= TELL_EVERY)
                && {
                    untold.last_told = Some(now);
                    true
                }
        };
        if due {
            self.flush();
        }
    }

    /// Tells what is finished and not told yet.
    pub(crate) fn flush(&self) {
        let (objects, failed) = {
            let mut untold = self.untold.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (std::mem::take(&mut untold.objects), std::mem::take(&mut untold.failed))
        };
        if objects > 0 {
            self.emit(&Event::Finished {
                target: self.target.to_string(),
                objects,
                failed,
            });
        }
    }

    /// These objects are done or accepted, as `outcome` says: the run's
    /// journal records them now, so a run stopped or killed later resends
    /// none of them. Targets call it as each batch is accepted; what they
    /// don't tell is journaled when they return.
    pub fn settled(&self, objects: &[String], outcome: &Outcome) {
        if let Some(settled) = &self.settled
            && matches!(outcome.status, super::Status::Done | super::Status::Accepted)
        {
            settled(objects, outcome);
        }
    }

    /// These objects are about to be sent to the vendor. A run whose
    /// journal records intent (the versioned server's) has recorded them
    /// when this resolves, so a replica that takes over a run killed
    /// mid-call knows they may have reached the vendor, and does not send
    /// them again. Targets call it once per call, before its first attempt,
    /// and send only if it answers `true` (`false`: they could not be
    /// recorded, or the run was stopped meanwhile).
    pub async fn sending(&self, objects: &[String]) -> bool {
        let recorded = match &self.sending {
            Some(sending) => sending(objects).await,
            None => true,
        };
        recorded && !self.is_stopped()
    }

    /// `calls` more calls were made to the target (requests, store calls),
    /// for the report.
    pub fn called(&self, calls: usize) {
        self.calls.fetch_add(calls, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A step that finishes nothing (waiting for a vendor's estimate, say).
    pub fn note(&self, message: impl Into<String>) {
        self.emit(&Event::Note {
            target: self.target.to_string(),
            message: message.into(),
        });
    }

    fn emit(&self, event: &Event) {
        if let Some(callback) = &self.callback {
            callback(event);
        }
    }
}

/// A layer that can be invalidated: a cache, the versioned server, a CDN.
///
/// Object-safe, so a [`Purger`](super::Purger) holds any mix. Objects reach
/// [`purge`](Target::purge) already checked by [`check_object`](super::check_object)
/// and by the target's own [`check`](Target::check), in the form to send.
///
/// ```
/// use async_trait::async_trait;
/// use edgecache_purge::{Layer, ObjectKind, Outcome, Progress, Refusal, Target};
///
/// /// A target that only counts what it is asked to purge.
/// struct Counter(std::sync::atomic::AtomicUsize);
///
/// #[async_trait]
/// impl Target for Counter {
///     fn name(&self) -> String { "counter".into() }
///     fn layer(&self) -> Layer { Layer::Local }
///     fn takes(&self, kind: ObjectKind) -> Result<(), Refusal> {
///         if kind == ObjectKind::Url { Ok(()) } else { Err("counts URLs only".into()) }
///     }
///     async fn purge(&self, _: ObjectKind, objects: &[String], progress: &Progress) -> Vec<Outcome> {
///         self.0.fetch_add(objects.len(), std::sync::atomic::Ordering::SeqCst);
///         progress.finished(objects.len(), 0);
///         objects.iter().map(|_| Outcome::done("counted")).collect()
///     }
/// }
/// ```
#[async_trait]
pub trait Target: Send + Sync {
    /// The target's name in reports: `cache`, `versions`, `akamai`, `alibaba`.
    fn name(&self) -> String;

    /// Where it sits between the origin and the user.
    fn layer(&self) -> Layer;

    /// Whether it takes objects of `kind`; if not, why (the report says so,
    /// and the objects are skipped there).
    fn takes(&self, kind: ObjectKind) -> Result<(), Refusal>;

    /// The target's own rules for one object, beyond those every target
    /// shares; the reason when it can't be sent. Default: none.
    fn check(&self, _kind: ObjectKind, _object: &str) -> Result<(), Refusal> {
        Ok(())
    }

    /// Purges `objects`: one [`Outcome`] for each, in the same order. Calls
    /// `progress` as batches finish. A target that is down fails its own
    /// objects, with the reason; it never returns fewer outcomes.
    async fn purge(&self, kind: ObjectKind, objects: &[String], progress: &Progress) -> Vec<Outcome>;

    /// Whether the target is reachable and its credentials accepted,
    /// without purging anything: what it found, or what is wrong.
    /// Default: nothing is checked.
    async fn probe(&self) -> Result<String, String> {
        Ok("not checked".into())
    }

    /// What the target serves for `url` after a purge sent at `since`: a
    /// CDN asks the edge through `edge` ([`EdgeProbe::check`] with its
    /// vendor), a cache reads its store. Default: unknown.
    async fn verify(&self, url: &str, since: SystemTime, edge: &EdgeProbe) -> Verdict {
        let _ = (url, since, edge);
        Verdict::unknown(format!("{} has no way to check what it serves", self.name()))
    }

    /// The URLs an object of `kind` covers here, when the target knows them
    /// (the versioned server knows which resources carried a tag): what a
    /// verification checks after a purge that names no URL. Default: `None`.
    async fn urls_of(&self, kind: ObjectKind, object: &str) -> Option<Vec<String>> {
        let _ = (kind, object);
        None
    }

    /// Warms `urls` again its own way (Alibaba Cloud's prefetch): one
    /// outcome each, in order. `None`, the default, leaves them to one
    /// fetch each through the edge.
    async fn rewarm(&self, urls: &[String]) -> Option<Vec<Outcome>> {
        let _ = urls;
        None
    }
}

#[async_trait]
impl<T: Target + ?Sized> Target for Arc<T> {
    fn name(&self) -> String {
        (**self).name()
    }

    fn layer(&self) -> Layer {
        (**self).layer()
    }

    fn takes(&self, kind: ObjectKind) -> Result<(), Refusal> {
        (**self).takes(kind)
    }

    fn check(&self, kind: ObjectKind, object: &str) -> Result<(), Refusal> {
        (**self).check(kind, object)
    }

    async fn purge(&self, kind: ObjectKind, objects: &[String], progress: &Progress) -> Vec<Outcome> {
        (**self).purge(kind, objects, progress).await
    }

    async fn probe(&self) -> Result<String, String> {
        (**self).probe().await
    }

    async fn verify(&self, url: &str, since: SystemTime, edge: &EdgeProbe) -> Verdict {
        (**self).verify(url, since, edge).await
    }

    async fn urls_of(&self, kind: ObjectKind, object: &str) -> Option<Vec<String>> {
        (**self).urls_of(kind, object).await
    }

    async fn rewarm(&self, urls: &[String]) -> Option<Vec<Outcome>> {
        (**self).rewarm(urls).await
    }
}
