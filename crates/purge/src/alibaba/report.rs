//! What a batch run reports: every URL and what became of it.

use serde::Serialize;

use super::ObjectType;

/// What became of one URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum UrlOutcome {
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

impl UrlOutcome {
    /// Whether this is what the user asked for.
    pub fn is_success(&self) -> bool {
        matches!(self, UrlOutcome::Complete | UrlOutcome::Accepted)
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
    pub outcome: UrlOutcome,
}

impl UrlReport {
    /// The outcome in the shape every purge target reports.
    pub fn to_outcome(&self) -> crate::Outcome {
        use crate::Outcome as Line;
        let line = match &self.outcome {
            UrlOutcome::Complete if self.resumed => Line::done("complete; submitted by an earlier run (journal)"),
            UrlOutcome::Complete => Line::done("complete"),
            UrlOutcome::Accepted if self.resumed => Line::accepted(None, "submitted by an earlier run (journal)"),
            UrlOutcome::Accepted => Line::accepted(None, "not waited for"),
            UrlOutcome::Failed { reason } => Line::failed(reason.clone(), true),
            UrlOutcome::TimedOut => Line::failed("still in progress at the timeout", true),
            UrlOutcome::Rejected {
                code,
                message,
                request_id,
            } => {
                let mut detail = message.clone();
                if let Some(code) = code {
                    detail = format!("{code}: {detail}");
                }
                if let Some(request_id) = request_id {
                    detail.push_str(&format!(" (RequestId {request_id})"));
                }
                // Transport errors and throttling pass; a refused call does not.
                let retryable = code.as_deref().is_none_or(super::client::retryable_code);
                Line::failed(detail, retryable)
            }
            UrlOutcome::NotSubmitted => Line::not_sent("the run stopped first"),
        };
        if self.task_ids.is_empty() {
            line
        } else {
            line.with_id(self.task_ids.join(","))
        }
    }
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
    pub fn count(&self, wanted: impl Fn(&UrlOutcome) -> bool) -> usize {
        self.urls.iter().filter(|url| wanted(&url.outcome)).count()
    }

    /// URLs that did not end as asked.
    pub fn unsuccessful(&self) -> impl Iterator<Item = &UrlReport> {
        self.urls.iter().filter(|url| !url.outcome.is_success())
    }
}
