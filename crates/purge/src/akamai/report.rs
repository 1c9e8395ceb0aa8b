//! What a Fast Purge run reports: each request's objects and how it ended.

use std::time::Duration;

use serde::Serialize;

use super::ObjectKind;
use crate::Outcome;

/// Akamai's answer to an accepted request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// The purge's id.
    #[serde(default)]
    pub purge_id: String,
    /// Quote it to Akamai support.
    #[serde(default)]
    pub support_id: String,
    /// Seconds until the purge is done everywhere.
    #[serde(default)]
    pub estimated_seconds: u64,
}

/// Why a request failed for good (after any retries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The HTTP status, or `None` for a transport error.
    pub status: Option<u16>,
    /// Akamai's problem title and detail, or the transport error.
    pub detail: String,
    /// Quote it to Akamai support.
    pub support_id: Option<String>,
    /// Attempts made; 0 when it was not sent (the run was stopped first).
    pub attempts: u32,
}

impl Failure {
    /// Whether trying again later could help: a transport error, a `429`
    /// or a `5xx`, not a refused request or bad credentials.
    pub fn is_retryable(&self) -> bool {
        self.status.is_none_or(edgecache_base::net::retryable_status)
    }

    /// The failure as one line: `403: Forbidden: … (supportId 17PY1)`.
    pub fn describe(&self) -> String {
        let status = self
            .status
            .map_or_else(|| "transport error".to_owned(), |status| status.to_string());
        let support = self
            .support_id
            .as_deref()
            .map(|id| format!(" (supportId {id})"))
            .unwrap_or_default();
        format!("{status}: {}{support}", self.detail)
    }
}

/// One request's objects and what became of them.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    /// The objects sent together.
    pub objects: Vec<String>,
    /// Accepted, or why not.
    pub outcome: Result<Accepted, Failure>,
}

/// The result of a purge: a report per request, every object accounted for.
#[derive(Debug, Clone, Serialize)]
pub struct PurgeReport {
    /// What the objects are.
    pub kind: ObjectKind,
    /// One per request sent.
    pub batches: Vec<BatchReport>,
}

impl PurgeReport {
    /// Whether every object was accepted.
    pub fn is_success(&self) -> bool {
        self.batches.iter().all(|batch| batch.outcome.is_ok())
    }

    /// Objects accepted.
    pub fn accepted(&self) -> usize {
        self.batches
            .iter()
            .filter(|batch| batch.outcome.is_ok())
            .map(|batch| batch.objects.len())
            .sum()
    }

    /// Each object that failed, with why.
    pub fn failed(&self) -> impl Iterator<Item = (&str, &Failure)> {
        self.batches
            .iter()
            .filter_map(|batch| batch.outcome.as_ref().err().map(|failure| (batch, failure)))
            .flat_map(|(batch, failure)| batch.objects.iter().map(move |object| (object.as_str(), failure)))
    }

    /// Resolves once Akamai's largest estimate has passed: the purge is then
    /// done (Fast Purge has no status endpoint).
    pub async fn wait(&self) {
        let longest = self
            .batches
            .iter()
            .filter_map(|batch| batch.outcome.as_ref().ok())
            .map(|a| a.estimated_seconds)
            .max();
        if let Some(seconds) = longest {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
        }
    }
}

impl PurgeReport {
    /// Each object's outcome in the shape every purge target reports, by
    /// the object as sent.
    pub fn outcomes(&self) -> std::collections::HashMap<&str, Outcome> {
        let mut outcomes = std::collections::HashMap::new();
        for batch in &self.batches {
            let outcome = batch.to_outcome();
            for object in &batch.objects {
                outcomes.insert(object.as_str(), outcome.clone());
            }
        }
        outcomes
    }
}

impl BatchReport {
    /// The outcome of each of its objects, in the shape every purge target
    /// reports.
    pub fn to_outcome(&self) -> Outcome {
        match &self.outcome {
            Ok(accepted) => Outcome::accepted(
                Some(accepted.estimated_seconds),
                format!(
                    "done in about {}s; supportId {}",
                    accepted.estimated_seconds, accepted.support_id
                ),
            )
            .with_id(accepted.purge_id.clone()),
            Err(failure) if failure.attempts == 0 => Outcome::not_sent(failure.detail.clone()),
            Err(failure) => Outcome::failed(failure.describe(), failure.is_retryable()),
        }
    }
}
