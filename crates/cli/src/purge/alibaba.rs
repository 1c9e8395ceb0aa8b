//! `edgecache purge alibaba refresh|prefetch …`: a URL list through Alibaba
//! Cloud CDN, validated, quota-checked, journaled, polled and reported.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use edgecache_purge::alibaba::{
    AlibabaCdnClient, Area, BatchError, Credentials, ObjectType, Operation, PrefetchOptions, RunReport, Step,
    UrlOutcome, check_objects,
};
use edgecache_purge::{ObjectReport, read_objects};

use super::report::{self, ProgressBar};

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
    #[arg(long, default_value = edgecache_purge::alibaba::DEFAULT_ENDPOINT)]
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
    let (common, operation) = operation(args.task)?;
    super::check_resume(common.resume, common.journal.as_deref())?;
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
    let mut job = client
        .batch(operation)
        .wait(!common.no_wait)
        .timeout(common.timeout)
        .on_progress(counting(bar.clone()))
        .stop_when(report::interrupted());
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
    report::print(&report::results(&lines(&report), &objects), common.json)?;
    summary(&report, started.elapsed(), common.journal.as_deref());
    Ok(if report.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The run's options and the operation the subcommand asks for.
fn operation(task: Task) -> anyhow::Result<(CommonArgs, Operation)> {
    Ok(match task {
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
    })
}

/// Steps as the bar shows them: running counts of submitted, completed
/// and failed URLs.
fn counting(bar: ProgressBar) -> impl Fn(Step) + Send + Sync + 'static {
    let counts = std::sync::Mutex::new([0usize; 3]);
    move |step| {
        let mut counts = counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (slot, urls) = match step {
            Step::Submitted(urls) => (0, urls),
            Step::Completed(urls) => (1, urls),
            Step::Failed(urls) => (2, urls),
        };
        counts[slot] += urls;
        let [submitted, completed, failed] = *counts;
        let line = format!("submitted {submitted} · completed {completed} · failed {failed}");
        if slot == 0 {
            bar.note(&line);
        } else {
            bar.advance(urls, &line);
        }
    }
}

/// One line per URL, in the shape every purge command reports.
fn lines(report: &RunReport) -> Vec<ObjectReport> {
    report
        .urls
        .iter()
        .map(|url| ObjectReport {
            target: "alibaba".into(),
            object: url.url.clone(),
            index: url.index,
            resumed: url.resumed,
            outcome: url.to_outcome(),
        })
        .collect()
}

/// Counts on standard error (each URL's result is on standard output).
fn summary(report: &RunReport, elapsed: Duration, journal: Option<&std::path::Path>) {
    let count = |wanted: fn(&UrlOutcome) -> bool| report.count(wanted);
    let resumed = report.urls.iter().filter(|url| url.resumed).count();
    eprintln!("URLs          {:>8}", report.urls.len());
    if report.duplicates > 0 {
        eprintln!("duplicates    {:>8} (skipped)", report.duplicates);
    }
    if resumed > 0 {
        eprintln!("from journal  {resumed:>8} (not sent again)");
    }
    eprintln!("calls         {:>8}", report.calls);
    eprintln!("complete      {:>8}", count(|o| matches!(o, UrlOutcome::Complete)));
    eprintln!(
        "accepted      {:>8} (not waited for)",
        count(|o| matches!(o, UrlOutcome::Accepted))
    );
    eprintln!("failed        {:>8}", count(|o| matches!(o, UrlOutcome::Failed { .. })));
    eprintln!("timed out     {:>8}", count(|o| matches!(o, UrlOutcome::TimedOut)));
    eprintln!(
        "rejected      {:>8}",
        count(|o| matches!(o, UrlOutcome::Rejected { .. }))
    );
    eprintln!("not sent      {:>8}", count(|o| matches!(o, UrlOutcome::NotSubmitted)));
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
