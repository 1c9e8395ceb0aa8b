//! `edgecache purge alibaba refresh|prefetch …`: a URL list through Alibaba
//! Cloud CDN, validated, quota-checked, journaled, polled and reported.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use edgecache::purge::alibaba::{
    AlibabaCdnClient, Area, BatchError, Credentials, ObjectType, Operation, Outcome, PrefetchOptions, Progress,
    RunReport, check_objects,
};
use edgecache::purge::{SourcedObject, read_objects};

use crate::purge::ProgressBar;
use crate::report::{self, ObjectResult};

#[derive(Args)]
pub struct AlibabaArgs {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Refresh (purge) cached copies of URLs, directories or patterns.
    Refresh(RefreshArgs),
    /// Prefetch (warm) URLs into the CDN's cache.
    Prefetch(PrefetchArgs),
}

#[derive(Args)]
struct RefreshArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// What the paths are.
    #[arg(long, value_enum, default_value_t = ObjectTypeArg::File)]
    object_type: ObjectTypeArg,
    /// Refresh even when the origin's copy has not changed.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct PrefetchArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Where to prefetch [default: the domain's setting].
    #[arg(long, value_enum)]
    area: Option<AreaArg>,
    /// Also warm the L2 (origin shield) nodes.
    #[arg(long)]
    l2_preload: bool,
    /// A header the CDN sends with its prefetch requests (`Name: value`; repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
}

#[derive(Args)]
struct CommonArgs {
    /// The URLs (for `refresh`, also directories or patterns: see its --object-type).
    urls: Vec<String>,
    /// Read URLs from a file, one per line (`-` for standard input; blank lines and `#` comments skipped).
    #[arg(short = 'r', long = "file")]
    files: Vec<PathBuf>,
    /// URLs per call [default: the API's maximum: 1000 URLs, 100 directories, 100 prefetches].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Return once every batch is accepted, without waiting for the tasks.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for tasks to finish (`90s`, `10m`, `2h`).
    #[arg(long, default_value = "30m", value_parser = crate::spec::parse_duration)]
    timeout: Duration,
    /// Record accepted batches here as they are accepted, so an interrupted run can be resumed.
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Continue the run recorded in --journal: URLs it accepted are polled, not sent again.
    #[arg(long, requires = "journal")]
    resume: bool,
    /// The credentials file's profile [default: $ALIBABA_CLOUD_PROFILE or `default`].
    #[arg(long)]
    profile: Option<String>,
    /// The API endpoint (another region, or a local stand-in).
    #[arg(long, default_value = edgecache::purge::alibaba::DEFAULT_ENDPOINT)]
    endpoint: reqwest::Url,
    /// Print the results as JSON (one record per URL; see the README).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ObjectTypeArg {
    File,
    Directory,
    Regex,
    IgnoreParams,
}

#[derive(Clone, Copy, ValueEnum)]
enum AreaArg {
    Domestic,
    Overseas,
}

pub async fn run(args: AlibabaArgs) -> anyhow::Result<ExitCode> {
    let (common, operation) = match args.task {
        Task::Refresh(args) => {
            let object_type = match args.object_type {
                ObjectTypeArg::File => ObjectType::File,
                ObjectTypeArg::Directory => ObjectType::Directory,
                ObjectTypeArg::Regex => ObjectType::Regex,
                ObjectTypeArg::IgnoreParams => ObjectType::IgnoreParams,
            };
            let operation = Operation::Refresh {
                object_type,
                force: args.force,
            };
            (args.common, operation)
        }
        Task::Prefetch(args) => {
            let mut headers = BTreeMap::new();
            for header in &args.headers {
                let (name, value) = crate::get::parse_header(header)?;
                headers.insert(name.to_string(), value.to_str().unwrap_or_default().to_owned());
            }
            let options = PrefetchOptions {
                area: args.area.map(|area| match area {
                    AreaArg::Domestic => Area::Domestic,
                    AreaArg::Overseas => Area::Overseas,
                }),
                l2_preload: args.l2_preload,
                headers,
            };
            (args.common, Operation::Prefetch(options))
        }
    };
    if common.resume
        && let Some(journal) = &common.journal
        && !journal.exists()
    {
        // A mistyped path would otherwise start a fresh run and pay twice.
        bail!(
            "--resume: there is no journal at {}; check the path, or drop --resume to start a run that --journal records",
            journal.display()
        );
    }
    let objects = read_objects(&common.urls, &common.files).context("reading URLs")?;
    if objects.is_empty() {
        bail!("nothing to send: give URLs as arguments or with -r FILE");
    }
    let texts: Vec<String> = objects.iter().map(|object| object.text.clone()).collect();
    // Every line is checked before credentials are read.
    let invalid = check_objects(&operation, &texts);
    if !invalid.is_empty() {
        return Err(report::invalid(&objects, &invalid));
    }
    let credentials = Credentials::load(common.profile.as_deref())?;
    let client = AlibabaCdnClient::new(credentials)?.endpoint(common.endpoint);

    let bar = ProgressBar::new(objects.len() as u64, "URLs");
    let reporter = bar.clone();
    let counts = std::sync::Mutex::new([0usize; 3]);
    let mut job = client
        .batch(operation)
        .wait(!common.no_wait)
        .timeout(common.timeout)
        .on_progress(move |step| {
            let mut counts = counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (slot, urls) = match step {
                Progress::Submitted(urls) => (0, urls),
                Progress::Completed(urls) => (1, urls),
                Progress::Failed(urls) => (2, urls),
            };
            counts[slot] += urls;
            let [submitted, completed, failed] = *counts;
            let line = format!("submitted {submitted} · completed {completed} · failed {failed}");
            if slot == 0 {
                reporter.note(&line);
            } else {
                reporter.advance(urls, &line);
            }
        })
        .stop_when(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "interrupted: finishing the calls in flight, sending nothing more (Ctrl-C again to quit now)"
                );
                tokio::spawn(async {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        std::process::exit(130);
                    }
                });
            }
        });
    if let Some(size) = common.batch_size {
        job = job.batch_size(size);
    }
    if let Some(journal) = &common.journal {
        job = job.journal(journal, common.resume);
    }
    let started = Instant::now();
    let report = job.run(texts).await;
    bar.finish();
    let report = match report {
        Ok(report) => report,
        Err(BatchError::Invalid(invalid)) => return Err(report::invalid(&objects, &invalid)),
        Err(error) => return Err(error.into()),
    };
    report::print(&results(&report, &objects), common.json)?;
    summary(&report, started.elapsed(), common.journal.as_deref());
    Ok(if report.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One result per URL, in the shape both CDN commands share.
fn results(report: &RunReport, objects: &[SourcedObject]) -> Vec<ObjectResult> {
    report
        .urls
        .iter()
        .map(|url| {
            let (status, detail) = match &url.outcome {
                Outcome::Complete => ("complete", String::new()),
                Outcome::Accepted => ("accepted", "not waited for".to_owned()),
                Outcome::Failed { reason } => ("failed", reason.clone()),
                Outcome::TimedOut => ("timed_out", "still in progress at the timeout".to_owned()),
                Outcome::Rejected {
                    code,
                    message,
                    request_id,
                } => {
                    let mut detail = message.clone();
                    if let Some(code) = code {
                        detail = format!("{code}: {detail}");
                    }
                    if let Some(request_id) = request_id {
                        detail.push_str(&format!(" (RequestId {request_id})"));
                    }
                    ("rejected", detail)
                }
                Outcome::NotSubmitted => ("not_sent", "the run stopped first".to_owned()),
            };
            ObjectResult {
                object: url.url.clone(),
                status,
                detail: if url.resumed && detail.is_empty() {
                    "submitted by an earlier run (journal)".to_owned()
                } else {
                    detail
                },
                origin: report::origin(objects, url.index),
                id: (!url.task_ids.is_empty()).then(|| url.task_ids.join(",")),
            }
        })
        .collect()
}

/// Counts on standard error (each URL's result is on standard output).
fn summary(report: &RunReport, elapsed: Duration, journal: Option<&std::path::Path>) {
    let count = |wanted: fn(&Outcome) -> bool| report.count(wanted);
    let resumed = report.urls.iter().filter(|url| url.resumed).count();
    eprintln!("URLs          {:>8}", report.urls.len());
    if report.duplicates > 0 {
        eprintln!("duplicates    {:>8} (skipped)", report.duplicates);
    }
    if resumed > 0 {
        eprintln!("from journal  {resumed:>8} (not sent again)");
    }
    eprintln!("calls         {:>8}", report.calls);
    eprintln!("complete      {:>8}", count(|o| matches!(o, Outcome::Complete)));
    eprintln!(
        "accepted      {:>8} (not waited for)",
        count(|o| matches!(o, Outcome::Accepted))
    );
    eprintln!("failed        {:>8}", count(|o| matches!(o, Outcome::Failed { .. })));
    eprintln!("timed out     {:>8}", count(|o| matches!(o, Outcome::TimedOut)));
    eprintln!("rejected      {:>8}", count(|o| matches!(o, Outcome::Rejected { .. })));
    eprintln!("not sent      {:>8}", count(|o| matches!(o, Outcome::NotSubmitted)));
    eprintln!("elapsed       {:>7.1}s", elapsed.as_secs_f64());
    if report.stopped {
        match journal {
            Some(journal) => eprintln!(
                "stopped early; continue with the same command plus --resume (journal {})",
                journal.display()
            ),
            None => eprintln!("stopped early; use --journal next time to resume without resubmitting"),
        }
    }
}
