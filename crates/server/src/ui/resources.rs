//! The resources table: searched and filtered in the index, a page at a
//! time, so ten thousand resources cost what fifty do.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use maud::{Markup, html};

use super::super::api::{ApiError, AppState, Listing, STRATEGY_KINDS, query_pairs};
use super::super::auth::Groups;
use super::super::index::VersionQuery;
use super::shell::SEGMENT;
use super::{fragment, when};
use edgecache_versions::{Resource, Strategy, VersionStatus};

/// Rows per page.
const PAGE: u64 = 50;

pub(super) async fn part(
    State(state): State<Arc<AppState>>,
    Extension(groups): Extension<Groups>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    // A form sends every field, empty or not; an empty one filters nothing.
    let pairs: Vec<(String, String)> = query_pairs(raw.as_deref())
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect();
    let page: u64 = pairs
        .iter()
        .find(|(name, _)| name == "page")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(1)
        .max(1);
    let filters: Vec<(String, String)> = pairs.into_iter().filter(|(name, _)| name != "page").collect();
    let mut listing = Listing::parse(filters.clone())?;
    listing.skip = (page - 1).saturating_mul(PAGE);
    listing.limit = PAGE;
    let found = state
        .index
        .resources(groups.list(), listing.filter, listing.skip, listing.limit)
        .await?;
    let newest =
        futures_util::future::join_all(found.items.iter().map(|resource| newest_status(&state, resource))).await;
    let rows: Vec<(Resource, Option<VersionStatus>)> = found
        .items
        .into_iter()
        .map(|resource| state.view(resource))
        .zip(newest)
        .collect();
    Ok(fragment(html! {
        h1 { "Resources" }
        (filter_form(&filters))
        @if rows.is_empty() {
            p.empty { "No resource matches." }
        } @else {
            table #resources {
                thead { tr { th { "URL" } th { "Group" } th { "Strategy" } th { "Newest" } th { "Last checked" } th { "Last error" } } }
                tbody {
                    @for (resource, status) in &rows {
                        (row(resource, *status))
                    }
                }
            }
        }
        (pager(&filters, page, found.total))
    }))
}

/// The newest version's status; a failed lookup shows as unknown.
async fn newest_status(state: &AppState, resource: &Resource) -> Option<VersionStatus> {
    let filter = VersionQuery {
        limit: 1,
        ..VersionQuery::default()
    };
    let page = state
        .index
        .versions(&resource.id, filter, jiff::Timestamp::now())
        .await
        .ok()?;
    page.items.first().map(|version| version.status)
}

fn row(resource: &Resource, status: Option<VersionStatus>) -> Markup {
    let href = format!(
        "/ui/resources/{}",
        percent_encoding::utf8_percent_encode(&resource.id, SEGMENT)
    );
    html! {
        tr {
            td.url { a href=(href) { (resource.method) " " (resource.url) (query(resource)) } }
            td { (resource.group) }
            td { (strategy(&resource.strategy)) }
            td { (status_badge(status)) }
            td { (when(resource.last_checked_at)) }
            td.error { (resource.last_error.as_deref().unwrap_or("")) }
        }
    }
}

/// `?name=value&…`, as the resource was registered (credentials redacted).
pub(super) fn query(resource: &Resource) -> String {
    if resource.query.is_empty() {
        return String::new();
    }
    let mut query = url::form_urlencoded::Serializer::for_suffix(String::from("?"), 1);
    query.extend_pairs(&resource.query);
    query.finish()
}

pub(super) fn status_badge(status: Option<VersionStatus>) -> Markup {
    let name = status.map_or("none", VersionStatus::as_str);
    html! { span.status data-status=(name) { (name) } }
}

/// A strategy in a few words.
pub(super) fn strategy(strategy: &Strategy) -> String {
    match strategy {
        Strategy::Never => "never".to_owned(),
        Strategy::Age { seconds } => format!("age {seconds} s"),
        Strategy::Cron { expr, timezone, .. } => match timezone {
            Some(zone) => format!("cron {expr} ({zone})"),
            None => format!("cron {expr}"),
        },
        Strategy::RemoteChanged {
            check_every_seconds, ..
        } => format!("remote changed, every {check_every_seconds} s"),
        Strategy::OnRequest { min_interval_seconds } => format!("on request, at most every {min_interval_seconds} s"),
    }
}

fn value<'a>(filters: &'a [(String, String)], name: &str) -> &'a str {
    filters
        .iter()
        .find(|(field, _)| field == name)
        .map_or("", |(_, value)| value.as_str())
}

fn filter_form(filters: &[(String, String)]) -> Markup {
    let select = |name: &str, label: &str, options: &[&str]| {
        let chosen = value(filters, name);
        html! {
            label { (label) " "
                select name=(name) {
                    option value="" { "any" }
                    @for option in options {
                        option value=(option) selected[*option == chosen] { (option) }
                    }
                }
            }
        }
    };
    html! {
        form #filters method="get" action="/ui" {
            label { "URL contains " input type="search" name="search" value=(value(filters, "search")); }
            label { "Group " input type="text" name="group" value=(value(filters, "group")); }
            (select("strategy", "Strategy", &STRATEGY_KINDS))
            (select("status", "Newest version", &["pending", "downloading", "ready", "failed"]))
            (select("failing", "Last fetch failed", &["true", "false"]))
            button type="submit" { "Filter" }
        }
    }
}

fn pager(filters: &[(String, String)], page: u64, total: u64) -> Markup {
    let pages = total.div_ceil(PAGE).max(1);
    let link = |to: u64| {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.extend_pairs(filters);
        query.append_pair("page", &to.to_string());
        format!("/ui?{}", query.finish())
    };
    let first = (page - 1).saturating_mul(PAGE).saturating_add(1).min(total);
    let last = page.saturating_mul(PAGE).min(total);
    html! {
        nav.pager {
            @if page > 1 { a rel="prev" href=(link(page - 1)) { "← Previous" } }
            span { (first) "–" (last) " of " (total) " · page " (page) " of " (pages) }
            @if page < pages { a rel="next" href=(link(page + 1)) { "Next →" } }
        }
    }
}
