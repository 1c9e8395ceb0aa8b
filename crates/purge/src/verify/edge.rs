//! Requests to the edges themselves: a check of what one edge serves for a
//! URL, and a rewarm fetch. Both go through one gate per host, so neither a
//! check nor a rewarm ever crowds an origin behind an edge that was just purged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;

use super::Verdict;
use super::signals::{self, Vendor};
use crate::{Outcome, TokenBucket};

/// The longest a check or a rewarm fetch may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Asks edges what they serve, at most `concurrency` requests at once and
/// `rate` a second per host. Made by [`Purger::verify`](crate::Purger::verify)
/// and handed to each target's [`Target::verify`](crate::Target::verify).
pub struct EdgeProbe {
    client: reqwest::Client,
    concurrency: usize,
    rate: f64,
    hosts: Mutex<HashMap<String, Arc<HostGate>>>,
}

impl std::fmt::Debug for EdgeProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeProbe")
            .field("concurrency", &self.concurrency)
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

/// One host's bound: requests at once, and a second.
struct HostGate {
    slots: Arc<Semaphore>,
    bucket: TokenBucket,
}

impl EdgeProbe {
    /// A probe that sends at most `concurrency` requests at once and `rate`
    /// a second to any one host (both at least 1; the rate may be fractional).
    pub fn new(concurrency: usize, rate: f64) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!(
                "edgecache/",
                env!("CARGO_PKG_VERSION"),
                " (purge verification)"
            ))
            .timeout(REQUEST_TIMEOUT)
            // What this URL's edge serves, not what a redirect leads to.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            concurrency: concurrency.max(1),
            rate: if rate.is_finite() && rate > 0.0 { rate } else { 1.0 },
            hosts: Mutex::default(),
        })
    }

    fn gate(&self, url: &url::Url) -> Arc<HostGate> {
        let host = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or(0)
        );
        let mut hosts = self.hosts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        hosts
            .entry(host)
            .or_insert_with(|| {
                Arc::new(HostGate {
                    slots: Arc::new(Semaphore::new(self.concurrency)),
                    // A bucket of one: requests are spaced evenly, never in a burst.
                    bucket: TokenBucket::new(1, self.rate),
                })
            })
            .clone()
    }

    /// Sends one request through the host's gate; the response and when it came.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<(reqwest::Response, SystemTime, tokio::sync::OwnedSemaphorePermit), String> {
        let parsed = url::Url::parse(url).map_err(|error| format!("not a URL: {error}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("not an http(s) URL: {}", parsed.scheme()));
        }
        let gate = self.gate(&parsed);
        let permit = gate
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "the check was stopped".to_owned())?;
        gate.bucket.take(1).await;
        let mut request = self.client.request(method, parsed);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .await
            .map_err(|error| edgecache_base::net::error_chain(&error))?;
        Ok((response, SystemTime::now(), permit))
    }

    /// What the edge in front of `url` serves for it, read as `vendor`'s
    /// edges say it, against a purge accepted at `since`. A `HEAD`
    /// request: the edge's own answer, without the body.
    pub async fn check(&self, url: &str, since: SystemTime, vendor: Vendor) -> Verdict {
        match self.send(reqwest::Method::HEAD, url, vendor.debug_headers()).await {
            Ok((response, received, _permit)) => {
                signals::judge(&signals::read(vendor, response.headers()), since, received)
            }
            Err(error) => Verdict::unknown(format!("the edge did not answer: {error}")),
        }
    }

    /// Fetches `url` once, reading the whole body so the edge stores it.
    pub(crate) async fn warm(&self, url: &str) -> Outcome {
        let (response, _, permit) = match self.send(reqwest::Method::GET, url, &[]).await {
            Ok(sent) => sent,
            Err(error) => return Outcome::failed(error, true),
        };
        let status = response.status();
        let mut response = response;
        let mut bytes: u64 = 0;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => bytes = bytes.saturating_add(chunk.len() as u64),
                Ok(None) => break,
                Err(error) => {
                    return Outcome::failed(
                        format!("the body broke off: {}", edgecache_base::net::error_chain(&error)),
                        true,
                    );
                }
            }
        }
        drop(permit);
        if status.is_success() || status.is_redirection() {
            Outcome::done(format!("fetched through the edge: {status}, {bytes} bytes"))
        } else {
            Outcome::failed(format!("the edge answered {status}"), status.is_server_error())
        }
    }
}
