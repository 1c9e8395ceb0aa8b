//! `edgecache purge … --via URL`: the purge goes to a versioned server that
//! holds the CDN credentials, and this command follows it there and prints
//! the same report.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use edgecache_purge::{ObjectKind, SourcedObject};

use super::report::{self, ObjectResult};

/// What is sent.
pub struct Request {
    pub kind: ObjectKind,
    pub objects: Vec<String>,
    /// Only these targets (the server's names); all when empty.
    pub only: Vec<String>,
    pub verify: bool,
}

/// How often the purge is asked after while it runs.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

pub async fn run(server: &str, request: Request, sources: &[SourcedObject], json: bool) -> anyhow::Result<ExitCode> {
    let base = url::Url::parse(server).with_context(|| format!("--via {server:?} is not a URL"))?;
    let client = edgecache_base::net::http_client()?;
    let token = std::env::var("EDGECACHE_SERVER_TOKEN")
        .ok()
        .filter(|token| !token.is_empty());
    let authorized = |builder: reqwest::RequestBuilder| match &token {
        Some(token) => builder.bearer_auth(token),
        None => builder,
    };
    let body = serde_json::json!({
        "kind": request.kind,
        "objects": request.objects,
        "targets": (!request.only.is_empty()).then_some(&request.only),
        "verify": request.verify,
    });
    let created = authorized(
        client
            .post(base.join("v1/purges")?)
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .send()
    .await
    .with_context(|| format!("sending the purge to {base}"))?;
    let status = created.status();
    let answer: serde_json::Value =
        serde_json::from_slice(&created.bytes().await.unwrap_or_default()).unwrap_or_default();
    if !status.is_success() {
        let message = answer["error"]["message"].as_str().unwrap_or("no reason given");
        bail!("{base} refused the purge ({status}): {message}");
    }
    let Some(id) = answer["id"].as_str() else {
        bail!("{base} accepted the purge but named no id");
    };
    eprintln!("queued at {base} as purge {id}; following it…");
    let bar = report::ProgressBar::new(0, "");
    let purge = loop {
        let answer = authorized(client.get(base.join(&format!("v1/purges/{id}"))?))
            .send()
            .await
            .with_context(|| format!("asking {base} about purge {id}"))?;
        if !answer.status().is_success() {
            bail!("{base} answered {} about purge {id}", answer.status());
        }
        let purge: serde_json::Value =
            serde_json::from_slice(&answer.bytes().await.context("reading the purge")?).context("reading the purge")?;
        let state = purge["status"].as_str().unwrap_or_default().to_owned();
        if state == "done" || state == "failed" {
            break purge;
        }
        let settled = purge["lines"].as_array().map_or(0, Vec::len);
        bar.note(&format!("{state}: {} settled", report::plural(settled, "line")));
        tokio::time::sleep(FOLLOW_EVERY).await;
    };
    bar.finish();
    let results: Vec<ObjectResult> = purge["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|line| {
            let object = line["object"].as_str().unwrap_or_default().to_owned();
            let index = sources
                .iter()
                .position(|source| source.text == object)
                .unwrap_or(usize::MAX);
            ObjectResult {
                target: line["target"].as_str().unwrap_or_default().to_owned(),
                status: status_name(line["status"].as_str().unwrap_or_default()),
                detail: line["detail"].as_str().unwrap_or_default().to_owned(),
                origin: report::origin(sources, index),
                id: line["id"].as_str().map(str::to_owned),
                retryable: false,
                check: None,
                object,
            }
        })
        .collect();
    report::print(&results, json)?;
    if let Some(error) = purge["report"]["error"].as_str() {
        eprintln!("the server could not run the purge: {error}");
    }
    eprintln!("purge {id} at {base}: {}", purge["status"].as_str().unwrap_or_default());
    Ok(if purge["status"] == "done" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A status as the report spells it, from the server's.
fn status_name(status: &str) -> &'static str {
    match status {
        "done" => "done",
        "accepted" => "accepted",
        "skipped" => "skipped",
        "not_sent" => "not_sent",
        _ => "failed",
    }
}
