//! The client cache as a purge target: a URL's entries (every variant), a
//! prefix's, or a tag's are deleted.

use async_trait::async_trait;
use futures_util::StreamExt;

use super::{Layer, ObjectKind, Outcome, Progress, Refusal, Target};
use edgecache::CacheMiddleware;

/// Deletes run this many at once (they are cheap, and Redis is a round trip).
const CONCURRENT_DELETES: usize = 16;

#[async_trait]
impl Target for CacheMiddleware {
    /// `shared-cache` for a cache in Redis, `cache` for this machine's own.
    fn name(&self) -> String {
        if self.store_is_remote() {
            "shared-cache".into()
        } else {
            "cache".into()
        }
    }

    /// A cache in Redis is shared by many machines: purged before the CDN
    /// edges. One in memory or SQLite is this machine's own: purged last.
    fn layer(&self) -> Layer {
        if self.store_is_remote() {
            Layer::Shared
        } else {
            Layer::Local
        }
    }

    fn takes(&self, kind: ObjectKind) -> Result<(), Refusal> {
        match kind {
            ObjectKind::Url | ObjectKind::Prefix | ObjectKind::Tag | ObjectKind::Everything => Ok(()),
            ObjectKind::CpCode => Err("CP codes are Akamai's; the cache files entries by URL and tag".into()),
            ObjectKind::Regex => Err("the cache deletes by URL, prefix or tag, not by pattern".into()),
            ObjectKind::Host => {
                Err("the cache deletes by URL, prefix or tag: purge the host's URLs as a prefix".into())
            }
        }
    }

    async fn purge(&self, kind: ObjectKind, objects: &[String], progress: &Progress) -> Vec<Outcome> {
        // By index: a closure over `&String` trips the compiler's `Send` check.
        futures_util::stream::iter(0..objects.len())
            .map(|at| async move {
                let object = &objects[at];
                if progress.is_stopped() {
                    return Outcome::not_sent("the run was stopped first");
                }
                progress.called(1);
                let deleted = match kind {
                    ObjectKind::Everything => {
                        let count = self.len().await;
                        match self.clear().await {
                            Ok(()) => count,
                            Err(error) => Err(error),
                        }
                    }
                    ObjectKind::Prefix => self.delete_prefix(object).await,
                    ObjectKind::Tag => self.delete_tag(object).await,
                    _ => self.delete_url(object).await,
                };
                let outcome = match deleted {
                    Ok(count) => Outcome::done(match count {
                        0 => "nothing was stored".to_owned(),
                        1 => "1 entry deleted".to_owned(),
                        count => format!("{count} entries deleted"),
                    }),
                    Err(error) => Outcome::failed(format!("the cache store failed: {error}"), true),
                };
                progress.settled(std::slice::from_ref(object), &outcome);
                progress.finished(1, usize::from(outcome.status == super::Status::Failed));
                outcome
            })
            .buffered(CONCURRENT_DELETES)
            .collect()
            .await
    }

    /// Reads the store: no entry, or only entries stored after the purge, is evicted.
    async fn verify(&self, url: &str, since: std::time::SystemTime, _: &crate::EdgeProbe) -> crate::Verdict {
        use crate::Verdict;
        match self.url_entries(url).await {
            Err(error) => Verdict::unknown(format!("the cache store failed: {error}")),
            Ok(entries) => match entries.iter().map(|entry| entry.created_at).min() {
                None => Verdict::evicted("no entry stored"),
                Some(oldest) if oldest >= since => Verdict::evicted("stored again after the purge"),
                Some(oldest) => Verdict::still_cached(format!(
                    "{} stored, the oldest {} s before the purge",
                    if entries.len() == 1 {
                        "1 entry".to_owned()
                    } else {
                        format!("{} entries", entries.len())
                    },
                    since.duration_since(oldest).map_or(0, |gap| gap.as_secs())
                )),
            },
        }
    }

    async fn probe(&self) -> Result<String, String> {
        self.stats()
            .await
            .map(|stats| format!("{} entries, {} bytes", stats.entries, stats.bytes))
            .map_err(|error| format!("the cache store failed: {error}"))
    }
}
