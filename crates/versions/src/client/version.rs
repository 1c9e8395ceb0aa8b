//! One version: pins, tags and its neighbours.

use super::*;

/// One version of a resource.
#[derive(Debug, Clone)]
pub struct VersionHandle {
    pub(super) resource: ResourceHandle,
    pub(super) id: String,
}

impl VersionHandle {
    async fn call(&self, method: Method, suffix: &str, body: Option<&Value>) -> Result<Version> {
        let path = self.resource.path(&format!("/versions/{}{suffix}", self.id)).await?;
        self.resource.client.json(method, &path, &[], body).await
    }

    /// The version's metadata.
    pub async fn get(&self) -> Result<Version> {
        self.call(Method::GET, "", None).await
    }

    /// Pins the version, for `duration` if given.
    pub async fn pin(&self, duration: Option<Duration>) -> Result<Version> {
        let pin = Pin {
            // Whole seconds, as the API takes them: less than one is its error to give.
            duration_seconds: duration.map(|duration| duration.as_secs()),
        };
        let body = serde_json::to_value(pin).unwrap_or_default();
        self.call(Method::PUT, "/pin", Some(&body)).await
    }

    /// Unpins the version.
    pub async fn unpin(&self) -> Result<Version> {
        self.call(Method::DELETE, "/pin", None).await
    }

    /// Tags the version (1 to 64 of `A-Za-z0-9._-`).
    pub async fn tag(&self, tag: &str) -> Result<Version> {
        self.call(Method::PUT, &format!("/tags/{}", encode_segment(tag)), None)
            .await
    }

    /// Removes a tag (harmless if the version lacks it).
    pub async fn untag(&self, tag: &str) -> Result<Version> {
        self.call(Method::DELETE, &format!("/tags/{}", encode_segment(tag)), None)
            .await
    }

    /// The next newer version, if any.
    pub async fn next(&self) -> Result<Option<Version>> {
        self.neighbour(true).await
    }

    /// The next older version, if any.
    pub async fn previous(&self) -> Result<Option<Version>> {
        self.neighbour(false).await
    }

    async fn neighbour(&self, newer: bool) -> Result<Option<Version>> {
        let this = self.get().await?;
        let versions = self.resource.versions(VersionFilter::default()).await?;
        let at = versions.iter().position(|version| version.id == this.id);
        // Newest first: newer is one up the list.
        Ok(at
            .and_then(|at| if newer { at.checked_sub(1) } else { at.checked_add(1) })
            .and_then(|at| versions.get(at).cloned()))
    }
}

pub(super) fn encode_segment(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}
