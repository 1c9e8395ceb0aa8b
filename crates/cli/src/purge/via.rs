//! `edgecache purge … --via URL`: the purge goes to a versioned server that
//! holds the CDN credentials, and this command follows it there and prints
//! the same report.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use edgecache_purge::{ObjectKind, SourcedObject, Verification};

use super::report::{self, ObjectResult};

/// The server a purge is sent to, and the token it is sent with.
pub struct Server {
    url: String,
    token: Option<String>,
}

impl Server {
    /// `server` [default: $EDGECACHE_SERVER_URL, else http://127.0.0.1:8008],
    /// with the token in `token_env` [default: EDGECACHE_SERVER_TOKEN].
    pub fn new(server: Option<String>, token_env: Option<&str>) -> Self {
        let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        Self {
            url: server
                .or_else(|| variable("EDGECACHE_SERVER_URL"))
                .unwrap_or_else(|| "http://127.0.0.1:8008".to_owned()),
            token: variable(token_env.unwrap_or("EDGECACHE_SERVER_TOKEN")),
        }
    }
}

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

pub async fn run(server: Server, request: Request, sources: &[SourcedObject], json: bool) -> anyhow::Result<ExitCode> {
    let Server { url, token } = server;
    let base = url::Url::parse(&url).with_context(|| format!("the server {url:?} is not a URL"))?;
    let client = edgecache_base::net::http_client()?;
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
    let mut results: Vec<ObjectResult> = purge["lines"]
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
    let verification = match &purge["report"]["verification"] {
        serde_json::Value::Null => None,
        found => Some(
            serde_json::from_value::<Verification>(found.clone())
                .with_context(|| format!("reading the verification of purge {id} from {base}"))?,
        ),
    };
    if let Some(verification) = &verification {
        super::verify::attach(&mut results, verification, sources);
    }
    report::print(&results, json)?;
    if let Some(error) = purge["report"]["error"].as_str() {
        eprintln!("the server could not run the purge: {error}");
    }
    let purged = purge["status"] == "done";
    eprintln!("purge {id} at {base}: {}", purge["status"].as_str().unwrap_or_default());
    match &verification {
        Some(verification) => {
            super::verify::summary(verification);
            Ok(super::verify::exit_code(purged, verification))
        }
        None if request.verify && purged => {
            bail!("{base} ran purge {id} but sent no verification, though --verify asked for one")
        }
        None => Ok(if purged { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
    }
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
