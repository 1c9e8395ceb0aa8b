//! Polling accepted tasks until each is done, by task id
//! (`DescribeRefreshTaskById`: 10 ids a call, 30 calls a second), never by
//! listing the account's tasks (`DescribeRefreshTasks`: 5 calls a second,
//! and a `Status` filter needs an `ObjectType`).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use futures_util::StreamExt;
use tokio::sync::watch;

use super::super::client::AlibabaError;
use super::super::report::{UrlOutcome, UrlReport};
use super::super::tasks::{TASK_IDS_PER_QUERY, TaskStatus};
use super::{BatchJob, Step};

impl BatchJob<'_> {
    /// Polls every accepted batch's tasks until each is done or the timeout
    /// passes, then reports each URL.
    pub(super) async fn poll_until_done(
        &self,
        reports: &mut [UrlReport],
        batches: Vec<(Vec<usize>, Vec<String>)>,
        mut stopped: watch::Receiver<bool>,
        progress: &(impl Fn(Step) + Sync),
    ) {
        let deadline = Instant::now() + self.timeout;
        let mut pending: Vec<(Vec<usize>, Vec<String>)> = batches;
        // Failed entries found so far, by task.
        let mut failures: HashMap<String, Vec<(String, String)>> = HashMap::new();
        let mut round = 0;
        while !pending.is_empty() {
            let unfinished: HashSet<&String> = pending.iter().flat_map(|(_, tasks)| tasks).collect();
            let unfinished: Vec<String> = unfinished
                .into_iter()
                .filter(|task| !failures.contains_key(*task))
                .cloned()
                .collect();
            match self.finished_tasks(&unfinished).await {
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
                            UrlOutcome::Failed {
                                reason: if reason.is_empty() {
                                    "the task failed".to_owned()
                                } else {
                                    (*reason).to_owned()
                                },
                            }
                        }
                        None => UrlOutcome::Complete,
                    };
                }
                progress(Step::Completed(members.len() - failed_here));
                if failed_here > 0 {
                    progress(Step::Failed(failed_here));
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
                reports[member].outcome = UrlOutcome::TimedOut;
            }
            progress(Step::Failed(members.len()));
        }
    }

    /// Which of `unfinished` tasks are done, with their failed entries as
    /// `(object path, reason)`. A task is done once the API returns it with
    /// no entry still in progress; one it does not return yet is not.
    async fn finished_tasks(
        &self,
        unfinished: &[String],
    ) -> Result<HashMap<String, Vec<(String, String)>>, AlibabaError> {
        // Owned groups: a closure over borrowed ids trips the compiler's
        // `Send` check where a run is awaited inside an async trait.
        let groups: Vec<Vec<String>> = unfinished.chunks(TASK_IDS_PER_QUERY).map(<[String]>::to_vec).collect();
        let answers = futures_util::stream::iter(groups)
            .map(|group| async move { self.client.tasks_by_id(&group).await })
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await;
        let mut entries: HashMap<String, Vec<(String, String)>> = HashMap::new();
        let mut running = HashSet::new();
        for answer in answers {
            for task in answer? {
                let failed = entries.entry(task.task_id.clone()).or_default();
                match task.status {
                    TaskStatus::Complete => {}
                    TaskStatus::Failed => failed.push((task.object_path, task.description)),
                    TaskStatus::Refreshing | TaskStatus::Other(_) => {
                        running.insert(task.task_id);
                    }
                }
            }
        }
        entries.retain(|task, _| !running.contains(task));
        Ok(entries)
    }
}
