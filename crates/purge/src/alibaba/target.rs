//! Alibaba Cloud CDN as a purge target: refresh by URL (`File`), by prefix
//! (`Directory`) or by pattern (`Regex`), waiting for the tasks to finish.
//! Prefetch stays its own warm-up ([`AlibabaCdnClient::batch`]).

use async_trait::async_trait;

use super::{AlibabaCdnClient, BatchError, ObjectType, Operation};
use crate::{Layer, ObjectKind, Outcome, Progress, Refusal, Target};

fn object_type(kind: ObjectKind) -> Result<ObjectType, Refusal> {
    match kind {
        ObjectKind::Url => Ok(ObjectType::File),
        ObjectKind::Prefix => Ok(ObjectType::Directory),
        ObjectKind::Regex => Ok(ObjectType::Regex),
        ObjectKind::Tag => Err("Alibaba Cloud CDN refreshes by URL, directory or pattern, not by tag".into()),
        ObjectKind::CpCode => Err("CP codes are Akamai's".into()),
        ObjectKind::Host => Err("Alibaba Cloud CDN has no purge by host: refresh the host's root directory".into()),
        ObjectKind::Everything => Err("Alibaba Cloud CDN has no purge-everything: refresh a directory".into()),
    }
}

#[async_trait]
impl Target for AlibabaCdnClient {
    fn name(&self) -> String {
        "alibaba".into()
    }

    fn layer(&self) -> Layer {
        Layer::Edge
    }

    fn takes(&self, kind: ObjectKind) -> Result<(), Refusal> {
        object_type(kind).map(drop)
    }

    fn check(&self, kind: ObjectKind, object: &str) -> Result<(), Refusal> {
        let object_type = object_type(kind)?;
        super::batch::prepare_url(Some(object_type), object)
            .map(drop)
            .map_err(|reason| Refusal::Invalid(format!("as an Alibaba {object_type} refresh, {reason}")))
    }

    async fn purge(&self, kind: ObjectKind, objects: &[String], progress: &Progress) -> Vec<Outcome> {
        let object_type = match object_type(kind) {
            Ok(object_type) => object_type,
            Err(reason) => return vec![Outcome::skipped(reason.to_string()); objects.len()],
        };
        let stop = progress.clone();
        let reporter = progress.clone();
        let journal = progress.clone();
        let intent = progress.clone();
        let run = self
            .batch(Operation::Refresh {
                object_type,
                force: self.forces(),
            })
            .on_progress(move |step| match step {
                super::Step::Submitted(_) => {}
                super::Step::Completed(urls) => reporter.finished(urls, 0),
                super::Step::Failed(urls) => reporter.finished(urls, urls),
            })
            .on_accepted(move |urls| {
                journal.settled(
                    urls,
                    &Outcome::accepted(None, "submitted; its task was not seen complete"),
                )
            })
            .on_sending(move |urls| {
                let (intent, urls) = (intent.clone(), urls.to_vec());
                Box::pin(async move { intent.sending(&urls).await })
            })
            .stop_when(async move { stop.stopped().await })
            .run(objects.iter().cloned())
            .await;
        match run {
            Ok(report) => {
                progress.called(report.calls);
                by_object(&report, objects)
            }
            Err(error) => {
                let retryable = matches!(&error, BatchError::Quota(error) if error.is_retryable());
                progress.finished(objects.len(), objects.len());
                vec![Outcome::failed(format!("nothing sent: {error}"), retryable); objects.len()]
            }
        }
    }

    /// Asks the edge in front of the URL, as Alibaba's edges answer.
    async fn verify(&self, url: &str, since: std::time::SystemTime, edge: &crate::EdgeProbe) -> crate::Verdict {
        edge.check(url, since, crate::verify::Vendor::Alibaba).await
    }

    /// Alibaba Cloud's own prefetch (`PushObjectCache`): its POPs fetch
    /// from the origin at the CDN's pace, not this machine's.
    async fn rewarm(&self, urls: &[String]) -> Option<Vec<Outcome>> {
        let run = self
            .batch(Operation::Prefetch(super::PrefetchOptions::default()))
            .run(urls.iter().cloned())
            .await;
        Some(match run {
            Ok(report) => by_object(&report, urls),
            Err(error) => vec![Outcome::failed(format!("prefetch not sent: {error}"), true); urls.len()],
        })
    }

    async fn probe(&self) -> Result<String, String> {
        match self.quota().await {
            Ok(quota) => Ok(format!(
                "credentials accepted; today {} of {} URL refreshes and {} of {} directory refreshes remain",
                quota.url_remain, quota.url_quota, quota.dir_remain, quota.dir_quota
            )),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// One outcome per object, in order, from a batch run's report.
fn by_object(report: &super::RunReport, objects: &[String]) -> Vec<Outcome> {
    let outcomes = report
        .urls
        .iter()
        .map(|url| (url.url.as_str(), url.to_outcome()))
        .collect();
    crate::report::in_order(objects, &outcomes, "the run's report did not cover it")
}
