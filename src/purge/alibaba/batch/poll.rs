//! Polling accepted tasks until each is done, with whichever of per-task
//! queries or account-wide listing needs fewer calls.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use futures_util::StreamExt;
use tokio::sync::watch;

use super::super::client::{AlibabaError, Task, TaskFilter, TaskStatus};
use super::super::report::{Outcome, UrlReport};
use super::{BatchJob, Progress};

impl BatchJob<'_> {
    /// Polls every accepted batch's tasks until each is done or the timeout
    /// passes, then reports each URL.
    pub(super) async fn poll_until_done(
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
            // Owned ids: a closure over `&String` trips the compiler's
            // `Send` check where a run is awaited inside an async trait.
            let checks = futures_util::stream::iter(unfinished.iter().cloned())
                .map(|task| async move {
                    let filter = TaskFilter {
                        task_id: Some(task.clone()),
                        status: Some(TaskStatus::Refreshing),
                        ..TaskFilter::default()
                    };
                    let page = self.client.tasks_page(&filter, 1, 1).await?;
                    Ok::<_, AlibabaError>((page.total_count == 0).then_some(task))
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
    async fn failed_entries(&self, tasks: &[String]) -> Result<Vec<Task>, AlibabaError> {
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
