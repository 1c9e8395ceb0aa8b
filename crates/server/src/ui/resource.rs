//! One resource: what it asks the origin for, and its versions as a
//! timeline, newest first, with the buttons that change them.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::Response;
use maud::{Markup, html};

use super::super::api::{ApiError, AppState};
use super::super::auth::Groups;
use super::super::index::VersionQuery;
use super::resources::{query, status_badge, strategy};
use super::{bytes, fragment, when};
use edgecache_versions::{Resource, Version, VersionStatus};

/// Versions shown: the newest this many.
const SHOWN: u64 = 100;

/// Pin durations offered, in seconds, and how they read.
const PIN_FOR: [(u64, &str); 4] = [
    (3600, "1 hour"),
    (86_400, "1 day"),
    (7 * 86_400, "7 days"),
    (30 * 86_400, "30 days"),
];

pub(super) async fn part(
    State(state): State<Arc<AppState>>,
    Extension(groups): Extension<Groups>,
    Path(rid): Path<String>,
) -> Result<Response, ApiError> {
    let resource = state.view(state.visible(&groups, &rid).await?);
    let filter = VersionQuery {
        limit: SHOWN,
        ..VersionQuery::default()
    };
    let versions = state.index.versions(&rid, filter, jiff::Timestamp::now()).await?;
    Ok(fragment(html! {
        (summary(&resource))
        h2 { "Versions" }
        @if versions.items.is_empty() {
            p.empty { "No version yet." }
        } @else {
            ol.timeline #versions {
                @for version in &versions.items {
                    (entry(version))
                }
            }
            @if versions.total > SHOWN {
                p { "The newest " (SHOWN) " of " (versions.total) " versions." }
            }
        }
    }))
}

fn summary(resource: &Resource) -> Markup {
    html! {
        section #resource data-rid=(resource.id) {
            h1.url { (resource.method) " " (resource.url) (query(resource)) }
            dl {
                dt { "Group" } dd { (resource.group) }
                dt { "Strategy" } dd { (strategy(&resource.strategy)) }
                dt { "Keeps" } dd { (resource.limits.max_unpinned) " unpinned, " (resource.limits.max_pinned) " pinned, " (resource.limits.max_failed) " failed" }
                @if !resource.headers.is_empty() {
                    dt { "Headers" }
                    dd { @for (name, value) in &resource.headers { code { (name) ": " (value) } " " } }
                }
                dt { "Last checked" } dd { (when(resource.last_checked_at)) }
                dt { "Next check" } dd { (when(resource.next_check_at)) }
                @if let Some(error) = &resource.last_error {
                    dt { "Last error" } dd.error { (error) " (" (resource.failures) " in a row)" }
                }
                @if let Some(description) = &resource.description {
                    dt { "Description" } dd { (description) }
                }
                @if let Some(link) = &resource.link {
                    dt { "Link" }
                    // Only http(s) becomes a link: a `javascript:` URL would run.
                    dd { @if is_web_link(link) { a href=(link) rel="noreferrer" { (link) } } @else { (link) } }
                }
            }
            div.actions {
                button type="button" data-action="fetch" { "Fetch now" }
                button.danger type="button" data-action="delete" { "Delete…" }
            }
            div #confirm-delete hidden {
                p { "Delete this resource and all its versions? This cannot be undone." }
                label { input type="checkbox" #force-delete; " Also if versions are pinned" }
                button.danger type="button" data-action="confirm-delete" { "Delete resource" }
                button type="button" data-action="cancel-delete" { "Cancel" }
            }
        }
    }
}

fn is_web_link(link: &str) -> bool {
    url::Url::parse(link).is_ok_and(|url| matches!(url.scheme(), "http" | "https"))
}

fn entry(version: &Version) -> Markup {
    let short = version.sha256.as_deref().map(|sha| sha.get(..12).unwrap_or(sha));
    html! {
        li.version data-version=(version.id) data-status=(version.status.as_str()) {
            div.head {
                time { (when(version.fetched_at.or(Some(version.created_at)))) }
                " " (status_badge(Some(version.status)))
                @if let Some(code) = version.status_code { " " span.code { "HTTP " (code) } }
                @if let Some(size) = version.size { " " span.size { (bytes(size)) } }
                @if let Some(short) = short { " " code.sha title=[version.sha256.as_deref()] { (short) } }
                @if version.pinned {
                    " " span.pinned { "pinned " (version.pinned_until.map_or("without end".to_owned(), |until| format!("until {}", when(Some(until))))) }
                }
            }
            @if let Some(error) = &version.error { p.error { (error) } }
            @if !version.tags.is_empty() || !version.cache_tags.is_empty() {
                p.tags {
                    @for tag in &version.tags {
                        span.tag { (tag) button.untag type="button" data-action="untag" data-tag=(tag) title="Remove this tag" { "×" } }
                    }
                    @for tag in &version.cache_tags { span.cache-tag title="cache tag from the origin" { (tag) } }
                }
            }
            @if !version.headers.is_empty() {
                details.headers {
                    summary { (version.headers.len()) " response headers" }
                    dl { @for (name, value) in &version.headers { dt { (name) } dd { code { (value) } } } }
                }
            }
            @if version.status == VersionStatus::Ready { (actions(version)) }
        }
    }
}

fn actions(version: &Version) -> Markup {
    html! {
        div.actions {
            @if version.pinned {
                button type="button" data-action="unpin" { "Unpin" }
            } @else {
                select.pin-for aria-label="Pin for" {
                    @for (seconds, label) in PIN_FOR { option value=(seconds) { (label) } }
                    option value="" { "without end" }
                }
                button type="button" data-action="pin" { "Pin" }
            }
            input.tag-name type="text" placeholder="tag" aria-label="Tag";
            button type="button" data-action="tag" { "Add tag" }
        }
    }
}
