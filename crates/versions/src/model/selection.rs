//! Which version a request is served: the selection and its one rule.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::Version;

/// Which version to serve. `force_*` are hard filters; `prefer_*` are
/// dropped one at a time when no ready version meets them all (pinned
/// first, then tag, then version); of what is left the newest wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[serde(default)]
pub struct Selection {
    /// Only this version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_version: Option<String>,
    /// Only versions with this tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._-]{1,64}$"))]
    pub force_tag: Option<String>,
    /// Only pinned versions.
    #[serde(skip_serializing_if = "is_false")]
    pub force_pinned: bool,
    /// Preferably this version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefer_version: Option<String>,
    /// Preferably a version with this tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._-]{1,64}$"))]
    pub prefer_tag: Option<String>,
    /// Preferably a pinned version.
    #[serde(skip_serializing_if = "is_false")]
    pub prefer_pinned: bool,
    /// The newest version fetched at or before this time (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(value_type = Option<String>), schema(value_type = Option<String>, format = DateTime))]
    pub at: Option<Timestamp>,
    /// Fetch first, and serve the new version.
    #[serde(skip_serializing_if = "is_false")]
    pub fresh: bool,
    /// Seconds to wait for a first ready version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<u64>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Selection {
    /// The newest ready version.
    pub fn new() -> Self {
        Self::default()
    }
    /// Prefer a pinned version.
    pub fn prefer_pinned(mut self) -> Self {
        self.prefer_pinned = true;
        self
    }
    /// Prefer a version with this tag.
    pub fn prefer_tag(mut self, tag: impl Into<String>) -> Self {
        self.prefer_tag = Some(tag.into());
        self
    }
    /// Prefer this version.
    pub fn prefer_version(mut self, id: impl Into<String>) -> Self {
        self.prefer_version = Some(id.into());
        self
    }
    /// Only this version.
    pub fn force_version(mut self, id: impl Into<String>) -> Self {
        self.force_version = Some(id.into());
        self
    }
    /// Only versions with this tag.
    pub fn force_tag(mut self, tag: impl Into<String>) -> Self {
        self.force_tag = Some(tag.into());
        self
    }
    /// Only pinned versions.
    pub fn force_pinned(mut self) -> Self {
        self.force_pinned = true;
        self
    }
    /// The newest version fetched at or before `at`.
    pub fn at(mut self, at: Timestamp) -> Self {
        self.at = Some(at);
        self
    }
    /// Fetch a new version first.
    pub fn fresh(mut self) -> Self {
        self.fresh = true;
        self
    }
    /// Wait up to `wait` for a first ready version.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait.as_secs());
        self
    }

    /// Picks from `ready` (ready versions, newest first) the version this
    /// selection serves. `fresh` and `wait` are not filters; the server
    /// acts on them before picking.
    pub fn pick<'v>(&self, ready: &'v [Version]) -> Option<&'v Version> {
        let forced = ready.iter().filter(|version| {
            self.force_version.as_ref().is_none_or(|id| &version.id == id)
                && self.force_tag.as_ref().is_none_or(|tag| version.tags.contains(tag))
                && (!self.force_pinned || version.pinned)
                && self
                    .at
                    .is_none_or(|at| version.fetched_at.is_some_and(|fetched| fetched <= at))
        });
        let candidates: Vec<&Version> = forced.collect();
        let by_version = |version: &Version| self.prefer_version.as_ref().is_none_or(|id| &version.id == id);
        let by_tag = |version: &Version| self.prefer_tag.as_ref().is_none_or(|tag| version.tags.contains(tag));
        let by_pin = |version: &Version| !self.prefer_pinned || version.pinned;
        // Preferences are dropped in this order: pinned, then tag, then version.
        let rounds: [&dyn Fn(&Version) -> bool; 4] = [
            &|v| by_version(v) && by_tag(v) && by_pin(v),
            &|v| by_version(v) && by_tag(v),
            &|v| by_version(v),
            &|_| true,
        ];
        rounds
            .iter()
            .find_map(|round| candidates.iter().copied().find(|version| round(version)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::version;
    use super::*;

    /// Newest first: v4 (tag b), v3 (pinned), v2 (tag a, pinned), v1 (tag a).
    fn versions() -> Vec<Version> {
        vec![
            version("v4", &["b"], false, 400),
            version("v3", &[], true, 300),
            version("v2", &["a"], true, 200),
            version("v1", &["a"], false, 100),
        ]
    }

    fn pick(selection: Selection) -> Option<String> {
        selection.pick(&versions()).map(|version| version.id.clone())
    }

    #[test]
    fn preferences_are_dropped_pinned_first_then_tag_then_version() {
        let cases: &[(Selection, Option<&str>)] = &[
            (Selection::new(), Some("v4")),
            (Selection::new().prefer_pinned(), Some("v3")),
            (Selection::new().prefer_tag("a"), Some("v2")),
            (Selection::new().prefer_tag("a").prefer_pinned(), Some("v2")),
            // No pinned version has tag b: pinned is dropped, tag b is kept.
            (Selection::new().prefer_tag("b").prefer_pinned(), Some("v4")),
            // Pinned goes first, then the unmet tag: the newest is left.
            (Selection::new().prefer_tag("zzz").prefer_pinned(), Some("v4")),
            (Selection::new().prefer_version("v1"), Some("v1")),
            // v1 isn't pinned: pinned goes, v1 with tag a stays.
            (
                Selection::new().prefer_version("v1").prefer_tag("a").prefer_pinned(),
                Some("v1"),
            ),
            // v1 lacks tag b: pinned then tag are dropped, the version stays.
            (
                Selection::new().prefer_version("v1").prefer_tag("b").prefer_pinned(),
                Some("v1"),
            ),
            (Selection::new().prefer_version("nope"), Some("v4")),
            (Selection::new().prefer_version("nope").prefer_pinned(), Some("v4")),
            (Selection::new().force_pinned(), Some("v3")),
            (Selection::new().force_tag("a"), Some("v2")),
            (Selection::new().force_tag("a").prefer_pinned(), Some("v2")),
            (
                Selection::new().force_tag("a").force_pinned().prefer_version("v1"),
                Some("v2"),
            ),
            (Selection::new().force_tag("b").force_pinned(), None),
            (Selection::new().force_version("v1"), Some("v1")),
            (Selection::new().force_version("v1").force_pinned(), None),
            (Selection::new().force_version("nope"), None),
            (Selection::new().force_tag("zzz").prefer_tag("a"), None),
        ];
        for (selection, expected) in cases {
            assert_eq!(pick(selection.clone()).as_deref(), *expected, "{selection:?}");
        }
    }

    #[test]
    fn at_picks_the_newest_version_fetched_by_then() {
        let at = |second| Timestamp::from_second(second).unwrap();
        assert_eq!(pick(Selection::new().at(at(250))).as_deref(), Some("v2"));
        assert_eq!(pick(Selection::new().at(at(300))).as_deref(), Some("v3"));
        assert_eq!(pick(Selection::new().at(at(99))), None);
        assert_eq!(
            pick(Selection::new().at(at(350)).prefer_tag("a")).as_deref(),
            Some("v2")
        );
        assert_eq!(pick(Selection::new().at(at(150)).force_pinned()), None);
        assert_eq!(
            pick(Selection::new().at(at(1000)).force_tag("b")).as_deref(),
            Some("v4")
        );
    }
}
