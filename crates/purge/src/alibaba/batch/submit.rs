//! Sending the packed batches, within the concurrency, journaling each one
//! the CDN accepts as soon as it does.

use futures_util::StreamExt;
use tokio::sync::watch;

use super::super::report::{UrlOutcome, UrlReport};
use super::{AcceptedBatch, BatchJob, Operation, Step, SubmitResult};
use crate::journal::Journal;

impl BatchJob<'_> {
    /// Sends each batch of `packed` (indexes into `reports`) unless the run
    /// was stopped first; each batch with its call's result, `None` when it
    /// wasn't sent.
    pub(super) async fn submit_all(
        &self,
        reports: &[UrlReport],
        packed: Vec<Vec<usize>>,
        journal: Option<Journal>,
        stopped: watch::Receiver<bool>,
        progress: &(impl Fn(Step) + Sync),
    ) -> Vec<(Vec<usize>, Option<SubmitResult>)> {
        futures_util::stream::iter(packed)
            .map(|members| {
                let stopped = stopped.clone();
                let paths: Vec<String> = members.iter().map(|&at| reports[at].url.clone()).collect();
                let journal = journal.clone();
                async move {
                    if *stopped.borrow() {
                        return (members, None);
                    }
                    if let Some(sending) = &self.sending
                        && (!sending(&paths).await || *stopped.borrow())
                    {
                        return (members, None);
                    }
                    let submitted = self.submit(paths, journal.as_ref()).await;
                    (members, Some(submitted))
                }
            })
            .buffer_unordered(self.concurrency)
            .inspect(|(members, submitted)| match submitted {
                Some(Ok(_)) => progress(Step::Submitted(members.len())),
                Some(Err(_)) => progress(Step::Failed(members.len())),
                None => {}
            })
            .collect()
            .await
    }

    /// One call; an accepted batch is told to `on_accepted` and journaled.
    async fn submit(&self, paths: Vec<String>, journal: Option<&Journal>) -> SubmitResult {
        let submitted = match &self.operation {
            Operation::Refresh { object_type, force } => self.client.refresh(&paths, *object_type, *force).await,
            Operation::Prefetch(options) => self.client.prefetch(&paths, options).await,
        };
        if let (Ok(_), Some(accepted)) = (&submitted, &self.accepted) {
            accepted(&paths);
        }
        if let (Ok(submitted), Some(journal)) = (&submitted, journal) {
            let record = AcceptedBatch {
                urls: paths,
                task_ids: submitted.task_ids.clone(),
                request_id: submitted.request_id.clone(),
            };
            if let Err(error) = journal.record(&record).await {
                tracing::error!(%error, "a batch was accepted but could not be journaled");
            }
        }
        submitted
    }
}

/// Writes each sent batch's result into its URLs' reports, and adds the
/// accepted ones to `batches` for polling; how many calls were accepted.
pub(super) fn record_submissions(
    reports: &mut [UrlReport],
    batches: &mut Vec<(Vec<usize>, Vec<String>)>,
    sent: Vec<(Vec<usize>, Option<SubmitResult>)>,
) -> usize {
    let mut calls = 0;
    for (members, submitted) in sent {
        match submitted {
            None => {}
            Some(Ok(submitted)) => {
                calls += 1;
                for &member in &members {
                    reports[member].task_ids = submitted.task_ids.clone();
                    reports[member].outcome = UrlOutcome::Accepted;
                }
                batches.push((members, submitted.task_ids));
            }
            Some(Err(error)) => {
                tracing::warn!(%error, urls = members.len(), "a batch was not accepted");
                let outcome = UrlOutcome::Rejected {
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
    calls
}
