//! `--verify` and `--rewarm` after a purge, and `purge verify` alone: the
//! options, the column they add to the report, and their summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::Args;
use edgecache_purge::{Purger, Seen, SourcedObject, Status, Verification, Verify, read_objects};
use serde::Serialize;

use super::report::{self, ObjectResult};

/// How checks and rewarm run: shared by `purge … --verify` and `purge verify`.
#[derive(Args, Clone)]
pub struct VerifyOptions {
    /// How long a URL still cached is asked again, with backoff, before it is reported still cached.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::spec::parse_duration)]
    verify_timeout: Duration,
    /// Requests at once to any one host, checks and rewarm together.
    #[arg(long, value_name = "N", default_value_t = 4)]
    per_host_concurrency: usize,
    /// Requests a second to any one host, checks and rewarm together.
    #[arg(long, value_name = "N", default_value_t = 10.0)]
    per_host_rate: f64,
}

impl VerifyOptions {
    /// The library's options, with the URLs to check after a purge that names none.
    pub fn to_verify(&self, rewarm: bool, urls_file: Option<&PathBuf>) -> anyhow::Result<Verify> {
        if !(self.per_host_rate.is_finite() && self.per_host_rate > 0.0) {
            bail!(
                "--per-host-rate: {} is not a positive number of requests a second",
                self.per_host_rate
            );
        }
        if self.per_host_concurrency == 0 {
            bail!("--per-host-concurrency: at least 1");
        }
        let urls = match urls_file {
            Some(file) => read_urls(&[], std::slice::from_ref(file))?
                .into_iter()
                .map(|url| url.text)
                .collect(),
            None => Vec::new(),
        };
        Ok(Verify::default()
            .timeout(self.verify_timeout)
            .rewarm(rewarm)
            .per_host(self.per_host_concurrency, self.per_host_rate)
            .urls(urls))
    }
}

/// URLs from arguments and files, each checked as a URL, with where each came from.
fn read_urls(arguments: &[String], files: &[PathBuf]) -> anyhow::Result<Vec<SourcedObject>> {
    let urls = read_objects(arguments, files).context("reading URLs")?;
    for url in &urls {
        if let Err(reason) = edgecache_purge::check_url(&url.text) {
            bail!("{}: {reason}: {:?}", url.origin, url.text);
        }
    }
    Ok(urls)
}

/// `edgecache purge verify`: check URLs at every target against a purge
/// sent at a time, without purging.
#[derive(Args)]
pub struct VerifyArgs {
    /// The URLs to check.
    urls: Vec<String>,
    /// Read URLs from a file, one per line (`-` for standard input; blank lines and `#` comments skipped).
    #[arg(short = 'r', long = "file")]
    files: Vec<PathBuf>,
    /// When the purge was sent: a time ago (`10m`, `2h`) or an RFC 3339 time (`2026-12-05T09:30:00Z`).
    #[arg(long, value_parser = parse_since)]
    since: SystemTime,
    /// The targets file [default: $EDGECACHE_TARGETS, else ./edgecache.toml].
    #[arg(long = "targets", value_name = "FILE")]
    targets: Option<PathBuf>,
    /// Only these targets (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Then fetch each URL cached nowhere once through its edge (Alibaba Cloud: its prefetch).
    #[arg(long)]
    rewarm: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    options: VerifyOptions,
}

/// `10m` ago, or an RFC 3339 time.
fn parse_since(text: &str) -> Result<SystemTime, String> {
    if let Ok(ago) = crate::spec::parse_duration(text) {
        return SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("{text:?} reaches before 1970"));
    }
    text.parse::<jiff::Timestamp>()
        .map(SystemTime::from)
        .map_err(|_| format!("{text:?} is neither a time ago (10m, 2h) nor an RFC 3339 time (2026-12-05T09:30:00Z)"))
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let urls = read_urls(&args.urls, &args.files)?;
    if urls.is_empty() {
        bail!("nothing to check: give URLs as arguments or with -r FILE");
    }
    let verify = args.options.to_verify(args.rewarm, None)?;
    let specs = super::targets::read(&super::targets::path(args.targets), &args.only)?;
    let mut builder = Purger::builder();
    for spec in &specs {
        builder = builder.target(spec.open(&super::targets::Overrides::default())?);
    }
    let purger = builder.build();
    let texts: Vec<String> = urls.iter().map(|url| url.text.clone()).collect();
    eprintln!(
        "checking {} at {}…",
        report::plural(texts.len(), "URL"),
        report::plural(purger.targets().len(), "target")
    );
    let verification = purger.verify_urls(&texts, args.since, verify).await?;
    let mut results = Vec::new();
    attach(&mut results, &verification, &urls);
    report::print(&results, args.json)?;
    summary(&verification);
    Ok(exit_code(true, &verification))
}

/// One line's verification: the column `--verify` adds, and its JSON fields.
#[derive(Debug, Serialize)]
pub struct Checked {
    /// `evicted`, `still_cached` or `unknown`.
    pub verified: &'static str,
    /// What the check saw, or why it could not tell.
    pub verify_detail: String,
    /// The edge that answered, when the vendor names it.
    pub edge: Option<String>,
    /// The `Age` it sent.
    pub age_seconds: Option<u64>,
    /// How often it was asked (0: not checked).
    pub verify_attempts: u32,
    /// With `--rewarm`: `done`, `failed` or `not_sent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewarm: Option<&'static str>,
    /// With `--rewarm`: how it was warmed, or why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewarm_detail: Option<String>,
}

/// Adds each check to its line of the report, and a `checked` line for each
/// check no line names (the URLs checked after a tag purge, or `purge verify`).
pub fn attach(results: &mut Vec<ObjectResult>, verification: &Verification, sources: &[SourcedObject]) {
    for check in &verification.checks {
        let rewarm = verification.rewarmed.iter().find(|rewarm| rewarm.url == check.url);
        let checked = Checked {
            verified: check.verdict.seen.as_str(),
            verify_detail: check.verdict.detail.clone(),
            edge: check.verdict.edge.clone(),
            age_seconds: check.verdict.age_seconds,
            verify_attempts: check.attempts,
            rewarm: rewarm.map(|rewarm| rewarm.outcome.status.as_str()),
            rewarm_detail: rewarm.map(|rewarm| format!("{}: {}", rewarm.via, rewarm.outcome.detail)),
        };
        match results
            .iter_mut()
            .find(|line| line.target == check.target && line.object == check.url && line.check.is_none())
        {
            Some(line) => line.check = Some(checked),
            None => results.push(ObjectResult {
                target: check.target.clone(),
                object: check.url.clone(),
                status: "checked",
                detail: String::new(),
                origin: report::origin(sources, check.index),
                id: None,
                retryable: false,
                check: Some(checked),
            }),
        }
    }
}

/// Counts per target on standard error, and what one probe can't see.
pub fn summary(verification: &Verification) {
    let mut targets: Vec<&str> = Vec::new();
    for check in &verification.checks {
        if !targets.contains(&check.target.as_str()) {
            targets.push(&check.target);
        }
    }
    eprintln!(
        "{:<12} {:>8} {:>12} {:>8}",
        "verified", "evicted", "still cached", "unknown"
    );
    for target in targets {
        let count = |seen: Seen| {
            verification
                .checks
                .iter()
                .filter(|check| check.target == target && check.verdict.seen == seen)
                .count()
        };
        eprintln!(
            "{:<12} {:>8} {:>12} {:>8}",
            target,
            count(Seen::Evicted),
            count(Seen::StillCached),
            count(Seen::Unknown)
        );
    }
    if !verification.rewarmed.is_empty() {
        let count = |status: Status| {
            verification
                .rewarmed
                .iter()
                .filter(|rewarm| rewarm.outcome.status == status)
                .count()
        };
        eprintln!(
            "rewarm: {} warmed, {} failed, {} held back",
            count(Status::Done) + count(Status::Accepted),
            count(Status::Failed),
            count(Status::NotSent)
        );
    }
    eprintln!(
        "checked in {:.1}s; each check reached one edge of many, the one named where the vendor names it",
        verification.elapsed.as_secs_f64()
    );
}

/// Failure when the purge failed, or anything is still cached after the timeout.
pub fn exit_code(purged: bool, verification: &Verification) -> ExitCode {
    if purged && verification.is_evicted_everywhere() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
