//! The purges run through this server: when, who, why, what, and per
//! target and object what became of it, newest first (`GET /v1/purges`'s
//! first page). Every value is escaped by `maud`: objects and vendors'
//! messages come from others.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::Response;
use maud::html;

use super::super::api::{ApiError, AppState, purges};
use super::super::index::PurgeFilter;
use super::{fragment, when};

/// Purges on the page.
const PAGE: u64 = 50;

pub(super) async fn part(State(state): State<Arc<AppState>>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let object = crate::api::query_pairs(raw.as_deref())
        .into_iter()
        .find(|(name, _)| name == "object")
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty());
    let filter = PurgeFilter {
        object: object.clone(),
        ..PurgeFilter::default()
    };
    let page = purges::listed(&state, filter, 0, PAGE).await?;
    let targets = state.purges.target_names();
    Ok(fragment(html! {
        h1 { "Purges" }
        @if targets.is_empty() {
            p.empty { "This server purges nowhere: start it with --purge-targets FILE." }
        } @else {
            p { "Purges reach, in this order: " (targets.join(", ")) "." }
        }
        form #purge-filter method="get" action="/ui/purges" {
            label { "Object " input name="object" type="search" value=[object.as_deref()]; }
            button type="submit" { "Filter" }
        }
        p { (page.total) " purge(s)" @if page.total > PAGE { ", the newest " (PAGE) " shown" } "." }
        table #purges {
            thead { tr { th { "When" } th { "Who" } th { "Cause" } th { "Kind" } th { "Objects" } th { "Status" } th { "Per target and object" } } }
            tbody {
                @for purge in &page.items {
                    tr data-id=(purge.id) {
                        td { (when(Some(purge.created_at))) }
                        td { (purge.who) }
                        td { (cause(&purge.cause)) }
                        td { (purge.kind) }
                        td.objects {
                            @for object in purge.objects.as_array().into_iter().flatten() {
                                div { (object.as_str().unwrap_or_default()) }
                            }
                        }
                        td class=(format!("status {}", purge.status)) { (purge.status) }
                        td.lines {
                            @for line in &purge.lines {
                                div class=(format!("line {}", line.status)) {
                                    strong { (line.target) } " " (line.status) " " span.object { (line.object) }
                                    @if !line.detail.is_empty() { " — " span.detail { (line.detail) } }
                                }
                            }
                        }
                    }
                }
                @if page.items.is_empty() { tr { td colspan="7" { "no purge yet" } } }
            }
        }
    }))
}

/// A cause in a few words.
fn cause(cause: &serde_json::Value) -> String {
    match cause["kind"].as_str() {
        Some("change") => format!(
            "resource {} changed: {} → {}",
            cause["resource"].as_str().unwrap_or("?"),
            cause["from_version"].as_str().unwrap_or("—"),
            cause["to_version"].as_str().unwrap_or("?")
        ),
        Some("request") if cause["verify"] == true => "a request, verified".to_owned(),
        Some("request") => "a request".to_owned(),
        _ => "—".to_owned(),
    }
}
