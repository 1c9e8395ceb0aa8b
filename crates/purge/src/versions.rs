//! The versioned server as a purge target: every resource of a URL, a
//! prefix or a tag that the token can see is fetched now. Pins are kept: a
//! pin is a user's explicit choice.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;

use super::{Layer, ObjectKind, Outcome, Progress, Refusal, Status, Target};
use edgecache_versions::{Client, Error, Resource, VersionStatus};

/// Fetches run this many at once; the server queues them by its own slots.
const CONCURRENT_FETCHES: usize = 8;
/// How long a fetch may take before the object is reported failed (the
/// fetch goes on on the server).
const FETCH_WAIT: Duration = Duration::from_secs(600);

#[async_trait]
impl Target for Client {
    fn name(&self) -> String {
        "versions".into()
    }

    fn layer(&self) -> Layer {
        Layer::Shared
    }

    fn takes(&self, kind: ObjectKind) -> Result<(), Refusal> {
        match kind {
            ObjectKind::Url | ObjectKind::Prefix | ObjectKind::Tag => Ok(()),
            ObjectKind::CpCode => Err("CP codes are Akamai's; the versioned server knows URLs and tags".into()),
            ObjectKind::Regex => Err("the versioned server selects by URL, prefix or tag, not by pattern".into()),
            ObjectKind::Host => {
                Err("the versioned server selects by URL, prefix or tag: purge the host's URLs as a prefix".into())
            }
            ObjectKind::Everything => {
                Err("the versioned server refetches by URL, prefix or tag; it keeps what it has otherwise".into())
            }
        }
    }

    async fn purge(&self, kind: ObjectKind, objects: &[String], progress: &Progress) -> Vec<Outcome> {
        // URLs and prefixes are matched against one listing; tags are
        // looked up on the server, which indexes them.
        let resources = if kind == ObjectKind::Tag || objects.is_empty() {
            Vec::new()
        } else {
            progress.called(1);
            match self.resources(None).await {
                Ok(resources) => resources,
                Err(error) => {
                    let outcome = Outcome::failed(format!("listing resources: {error}"), retryable(&error));
                    progress.finished(objects.len(), objects.len());
                    return vec![outcome; objects.len()];
                }
            }
        };
        let resources = &resources;
        // By index: a closure over `&String` trips the compiler's `Send` check.
        futures_util::stream::iter(0..objects.len())
            .map(|at| async move {
                let object = &objects[at];
                let tagged = if kind == ObjectKind::Tag {
                    progress.called(1);
                    match self.resources_with_cache_tag(object).await {
                        Ok(found) => found,
                        Err(error) => {
                            progress.finished(1, 1);
                            return Outcome::failed(format!("listing resources: {error}"), retryable(&error));
                        }
                    }
                } else {
                    Vec::new()
                };
                let matching: Vec<&Resource> = match kind {
                    ObjectKind::Tag => tagged.iter().collect(),
                    _ => resources
                        .iter()
                        .filter(|resource| matches(kind, object, resource))
                        .collect(),
                };
                let outcome = refetch(self, &matching, progress).await;
                progress.settled(std::slice::from_ref(object), &outcome);
                progress.finished(1, usize::from(outcome.status == Status::Failed));
                outcome
            })
            .buffered(CONCURRENT_FETCHES)
            .collect()
            .await
    }

    /// The URLs of the resources a tag or a prefix selects.
    async fn urls_of(&self, kind: ObjectKind, object: &str) -> Option<Vec<String>> {
        let resources = match kind {
            ObjectKind::Tag => self.resources_with_cache_tag(object).await.ok()?,
            ObjectKind::Prefix => {
                let all = self.resources(None).await.ok()?;
                all.into_iter()
                    .filter(|resource| matches(kind, object, resource))
                    .collect()
            }
            _ => return None,
        };
        Some(resources.iter().filter_map(full_url).collect())
    }

    /// Asks the server when each resource of the URL last asked its origin.
    async fn verify(&self, url: &str, since: std::time::SystemTime, _: &crate::EdgeProbe) -> crate::Verdict {
        use crate::Verdict;
        let resources = match self.resources(None).await {
            Ok(resources) => resources,
            Err(error) => return Verdict::unknown(format!("listing resources: {error}")),
        };
        let mut stale = Vec::new();
        let mut matched = 0;
        for resource in resources
            .iter()
            .filter(|resource| matches(ObjectKind::Url, url, resource))
        {
            matched += 1;
            let checked = resource.last_checked_at.map(std::time::SystemTime::from);
            if resource.last_error.is_some() || checked.is_none_or(|checked| checked < since) {
                stale.push(match &resource.last_error {
                    Some(error) => format!("resource {}: its last fetch failed: {error}", resource.id),
                    None => format!("resource {}: the origin was last asked before the purge", resource.id),
                });
            }
        }
        match (matched, stale.is_empty()) {
            (0, _) => Verdict::evicted("no resource of it is registered"),
            (_, true) => Verdict::evicted("the origin was asked after the purge"),
            (_, false) => Verdict::still_cached(stale.join("; ")),
        }
    }

    async fn probe(&self) -> Result<String, String> {
        match self.resources(None).await {
            Ok(resources) => Ok(format!("{} resources visible to this token", resources.len())),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// Fetches each resource now and waits for the new versions: the new
/// version ids, `unchanged` for those whose body hashed the same.
async fn refetch(client: &Client, resources: &[&Resource], progress: &Progress) -> Outcome {
    if resources.is_empty() {
        return Outcome::done("no resource of it is registered");
    }
    if progress.is_stopped() {
        return Outcome::not_sent("the run was stopped first");
    }
    let mut fetched = Vec::new();
    let mut unchanged = 0;
    for resource in resources {
        match fetch_and_wait(client, &resource.id, progress).await {
            Ok(Some(version)) => fetched.push(version),
            Ok(None) => unchanged += 1,
            Err((reason, retryable)) => {
                return Outcome::failed(format!("resource {}: {reason}", resource.id), retryable);
            }
        }
    }
    let mut detail = Vec::new();
    if !fetched.is_empty() {
        detail.push(format!("new version {}", fetched.join(", ")));
    }
    if unchanged > 0 {
        detail.push(format!(
            "{unchanged} unchanged (the body hashed the same as the newest version)"
        ));
    }
    let outcome = Outcome::done(detail.join("; "));
    if fetched.is_empty() {
        outcome
    } else {
        outcome.with_id(fetched.join(","))
    }
}

/// The new version's id, `None` when the content was unchanged, or why
/// the fetch failed and whether trying again could help.
async fn fetch_and_wait(
    client: &Client,
    resource: &str,
    progress: &Progress,
) -> Result<Option<String>, (String, bool)> {
    let handle = client.resource_by_id(resource);
    progress.called(1);
    let pending = handle
        .fetch_now()
        .await
        .map_err(|error| (error.to_string(), retryable(&error)))?;
    let started = Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut version = pending;
    loop {
        match version.status {
            VersionStatus::Ready => return Ok(Some(version.id)),
            VersionStatus::Failed => {
                return Err((version.error.unwrap_or_else(|| "the fetch failed".into()), true));
            }
            VersionStatus::Pending | VersionStatus::Downloading => {}
        }
        if started.elapsed() > FETCH_WAIT {
            return Err((
                format!(
                    "version {} still {} after {} s",
                    version.id,
                    version.status.as_str(),
                    FETCH_WAIT.as_secs()
                ),
                true,
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
        progress.called(1);
        version = match handle.version(&version.id).get().await {
            Ok(version) => version,
            // An unchanged body creates no version: the pending one goes.
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err((error.to_string(), retryable(&error))),
        };
    }
}

/// Whether `resource` is the URL, or under the prefix, that `object` names.
fn matches(kind: ObjectKind, object: &str, resource: &Resource) -> bool {
    match kind {
        ObjectKind::Prefix => full_url(resource).is_some_and(|url| url.starts_with(object)),
        _ => full_url(resource).is_some_and(|url| url == object),
    }
}

/// The resource's URL with its query, as a purge names it.
fn full_url(resource: &Resource) -> Option<String> {
    let mut url = url::Url::parse(&resource.url).ok()?;
    if !resource.query.is_empty() {
        url.query_pairs_mut().extend_pairs(&resource.query);
    }
    Some(url.into())
}

fn retryable(error: &Error) -> bool {
    !matches!(
        error,
        Error::Unauthorized { .. } | Error::Forbidden { .. } | Error::Config { .. }
    )
}
