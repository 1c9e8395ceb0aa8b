//! The server: its fetches, its disk, and the request and fetch counters,
//! read from the same recorder `/metrics` renders.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use maud::html;

use super::super::api::{ApiError, AppState};
use super::{bytes, fragment};

pub(super) async fn part(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let (running, waiting) = state.worker.load().await;
    let disk = state.library.blobs.disk();
    let text = state.metrics_text();
    let requests = totals(&text, "edgecache_server_requests_total", |labels| {
        let status = label(labels, "status").unwrap_or("?");
        format!("{}xx", status.get(..1).unwrap_or("?"))
    });
    let fetches = totals(&text, "edgecache_server_fetches_total", |labels| {
        label(labels, "outcome").unwrap_or("?").to_owned()
    });
    Ok(fragment(html! {
        h1 { "Server" }
        section.cards {
            div.card #in-flight { h2 { "Fetches downloading" } p.figure { (running) } }
            div.card #queued { h2 { "Fetches waiting for a slot" } p.figure { (waiting) } }
            div.card #disk {
                h2 { "Data disk" }
                @if let Some((free, total)) = disk {
                    p.figure { (bytes(free)) " free" }
                    p { "of " (bytes(total)) }
                } @else {
                    p { "bodies are in a bucket" }
                }
            }
        }
        h2 { "Requests since start" }
        (table("requests", "status", &requests))
        h2 { "Fetches since start" }
        (table("fetches", "outcome", &fetches))
        @if state.metrics.is_none() {
            p.error { "Another metrics recorder is installed in this process: the counters are with it." }
        }
        p.empty { "Every counter is at /metrics, in Prometheus text." }
    }))
}

fn table(id: &str, what: &str, totals: &BTreeMap<String, f64>) -> maud::Markup {
    html! {
        table id=(id) {
            thead { tr { th { (what) } th { "count" } } }
            tbody {
                @for (name, count) in totals { tr { td { (name) } td.count { (count) } } }
                @if totals.is_empty() { tr { td colspan="2" { "none yet" } } }
            }
        }
    }
}

/// The sum of `name`'s samples, grouped by what `group` makes of their labels.
fn totals(text: &str, name: &str, group: impl Fn(&[(String, String)]) -> String) -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    for (sample, labels, value) in samples(text) {
        if sample == name {
            *totals.entry(group(&labels)).or_insert(0.0) += value;
        }
    }
    totals
}

fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(label, _)| label == name)
        .map(|(_, value)| value.as_str())
}

/// The samples of Prometheus text: `name{label="value",…} value`. Comments
/// and lines that don't parse are skipped.
fn samples(text: &str) -> impl Iterator<Item = (&str, Vec<(String, String)>, f64)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let name_end = line.find(['{', ' '])?;
        let (name, rest) = line.split_at(name_end);
        let (labels, rest) = match rest.strip_prefix('{') {
            Some(inside) => parse_labels(inside)?,
            None => (Vec::new(), rest),
        };
        let value = rest.split_whitespace().next()?.parse().ok()?;
        Some((name, labels, value))
    })
}

/// `label="value",…}` and what follows the `}`.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (name, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (index, '"') => break index,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, other) => value.push(other),
            }
        };
        labels.push((name.trim().to_owned(), value));
        text = rest.get(end + 1..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels_and_summed_by_group() {
        let text = "# HELP x\n# TYPE edgecache_server_requests_total counter\n\
            edgecache_server_requests_total{route=\"/v1/resources\",method=\"GET\",status=\"200\"} 3\n\
            edgecache_server_requests_total{route=\"/a\\\"b\",method=\"PUT\",status=\"201\"} 2\n\
            edgecache_server_requests_total{route=\"/v1\",method=\"GET\",status=\"404\"} 1\n\
            edgecache_server_fetches_total{outcome=\"failed\"} 4\n";
        let requests = totals(text, "edgecache_server_requests_total", |labels| {
            label(labels, "status").unwrap_or("?")[..1].to_owned()
        });
        assert_eq!(requests, BTreeMap::from([("2".to_owned(), 5.0), ("4".to_owned(), 1.0)]));
        let routes: Vec<String> = samples(text)
            .filter_map(|(_, labels, _)| label(&labels, "route").map(str::to_owned))
            .collect();
        assert_eq!(routes, ["/v1/resources", "/a\"b", "/v1"]);
    }

    proptest::proptest! {
        #[test]
        fn any_text_gives_samples_without_panicking(text in "\\PC{0,300}") {
            for (name, _, _) in samples(&text) {
                proptest::prop_assert!(!name.contains('{'), "a name holds no label: {}", name);
            }
        }

        #[test]
        fn label_like_text_gives_samples_without_panicking(text in "[a-z_]{1,8}(\\{([a-z]{1,4}=\"([^\"\\\\]|\\\\.){0,6}\",?){0,3}\\}?)? ?[0-9.e+-]{0,6}") {
            let _ = samples(&text).count();
        }
    }
}
