//! `edgecache purge akamai …`: purge objects from a CDN, with progress and a summary.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use edgecache::edgegrid::Credentials;
use edgecache::purge::akamai::{Action, FastPurgeClient, Network, ObjectKind, PurgeError, PurgeReport, check_objects};
use edgecache::purge::{SourcedObject, check_url, read_objects};

use crate::report::{self, ObjectResult};

#[derive(Args)]
pub struct PurgeArgs {
    #[command(subcommand)]
    cdn: Cdn,
}

#[derive(Subcommand)]
enum Cdn {
    /// Akamai Fast Purge v3.
    Akamai(AkamaiArgs),
    /// Alibaba Cloud CDN refresh and prefetch.
    Alibaba(crate::purge_alibaba::AlibabaArgs),
}

#[derive(Args)]
struct AkamaiArgs {
    /// Objects to purge (URLs, tags or CP codes).
    objects: Vec<String>,
    /// Read objects from a file, one per line (`-` for standard input; blank lines and `#` comments skipped).
    #[arg(short = 'r', long = "file")]
    files: Vec<PathBuf>,
    /// The `.edgerc` file [default: $AKAMAI_EDGERC or ~/.edgerc].
    #[arg(long)]
    edgerc: Option<PathBuf>,
    /// The `.edgerc` section [default: $AKAMAI_EDGERC_SECTION or `default`].
    #[arg(long)]
    section: Option<String>,
    /// Purge on the staging network instead of production.
    #[arg(long)]
    staging: bool,
    /// What to do with cached copies.
    #[arg(long, value_enum, default_value_t = ActionArg::Delete)]
    action: ActionArg,
    /// What the objects are.
    #[arg(long = "type", value_enum, default_value_t = KindArg::Url)]
    kind: KindArg,
    /// The scheme to reach the API with (`http` for a local stand-in).
    #[arg(long, default_value = "https")]
    scheme: String,
    /// Wait until Akamai's estimate says the purge is done.
    #[arg(long)]
    wait: bool,
    /// Print the results as JSON (one record per object; see the README).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ActionArg {
    Invalidate,
    Delete,
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Url,
    Tag,
    Cpcode,
}

pub async fn run(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    match args.cdn {
        Cdn::Akamai(args) => akamai(args).await,
        Cdn::Alibaba(args) => crate::purge_alibaba::run(args).await,
    }
}

async fn akamai(args: AkamaiArgs) -> anyhow::Result<ExitCode> {
    let objects = read_objects(&args.objects, &args.files).context("reading objects")?;
    if objects.is_empty() {
        bail!("nothing to purge: give objects as arguments or with -r FILE");
    }
    let kind = match args.kind {
        KindArg::Url => ObjectKind::Url,
        KindArg::Tag => ObjectKind::Tag,
        KindArg::Cpcode => ObjectKind::CpCode,
    };
    let texts: Vec<String> = objects.iter().map(|object| object.text.clone()).collect();
    // Every line is checked before credentials are read.
    let invalid = check_objects(kind, &texts);
    if !invalid.is_empty() {
        return Err(report::invalid(&objects, &invalid));
    }
    let credentials = Credentials::load(args.edgerc.as_deref(), args.section.as_deref())?;
    let progress = ProgressBar::new(objects.len() as u64, "objects");
    let reporter = progress.clone();
    let client = FastPurgeClient::new(credentials)?
        .scheme(args.scheme)
        .network(if args.staging {
            Network::Staging
        } else {
            Network::Production
        })
        .action(match args.action {
            ActionArg::Invalidate => Action::Invalidate,
            ActionArg::Delete => Action::Delete,
        })
        .on_progress(move |batch| {
            let verdict = if batch.outcome.is_ok() { "accepted" } else { "FAILED" };
            reporter.advance(
                batch.objects.len(),
                &format!("{verdict} {}", report::plural(batch.objects.len(), "object")),
            );
        });
    let purged = match client.purge(kind, texts).await {
        Ok(purged) => purged,
        Err(PurgeError::Invalid(invalid)) => {
            progress.finish();
            return Err(report::invalid(&objects, &invalid));
        }
    };
    progress.finish();
    let results = results(&purged, &objects);
    report::print(&results, args.json)?;
    summary(&purged);
    if args.wait && purged.accepted() > 0 {
        eprintln!("waiting for Akamai's estimate to pass…");
        purged.wait().await;
    }
    Ok(if purged.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One result per object, in the shape both CDN commands share.
fn results(purged: &PurgeReport, objects: &[SourcedObject]) -> Vec<ObjectResult> {
    // URLs were sent encoded: match them by that form too. One map, built
    // once: a search per object made 20,000 URLs cost minutes.
    let mut origins: HashMap<String, &str> = HashMap::with_capacity(objects.len() * 2);
    for sourced in objects.iter().rev() {
        if let Ok(url) = check_url(&sourced.text) {
            origins.insert(url.into(), &sourced.origin);
        }
        origins.insert(sourced.text.clone(), &sourced.origin);
    }
    let origin = |object: &str| {
        origins
            .get(object)
            .map_or_else(|| "input".to_owned(), |origin| (*origin).to_owned())
    };
    let mut results = Vec::new();
    for batch in &purged.batches {
        for object in &batch.objects {
            results.push(match &batch.outcome {
                Ok(accepted) => ObjectResult {
                    object: object.clone(),
                    status: "accepted",
                    detail: format!(
                        "done in about {}s; supportId {}",
                        accepted.estimated_seconds, accepted.support_id
                    ),
                    origin: origin(object),
                    id: Some(accepted.purge_id.clone()),
                },
                Err(failure) => ObjectResult {
                    object: object.clone(),
                    status: "failed",
                    detail: {
                        let status = failure
                            .status
                            .map_or_else(|| "transport error".to_owned(), |status| status.to_string());
                        let support = failure
                            .support_id
                            .as_deref()
                            .map(|id| format!(" (supportId {id})"))
                            .unwrap_or_default();
                        format!("{status}: {}{support}", failure.detail)
                    },
                    origin: origin(object),
                    id: None,
                },
            });
        }
    }
    results
}

/// Counts on standard error.
fn summary(purged: &PurgeReport) {
    let failed = purged.failed().count();
    let longest = purged
        .batches
        .iter()
        .filter_map(|batch| batch.outcome.as_ref().ok())
        .map(|accepted| accepted.estimated_seconds)
        .max();
    eprintln!("requests   {:>8}", purged.batches.len());
    eprintln!("accepted   {:>8} {}", purged.accepted(), purged.kind);
    eprintln!("failed     {:>8}", failed);
    if let Some(seconds) = longest {
        eprintln!("done in    {seconds:>7}s (Akamai's estimate)");
    }
}

/// A progress bar on a terminal, plain lines otherwise.
#[derive(Clone)]
pub struct ProgressBar(Option<indicatif::ProgressBar>);

impl ProgressBar {
    pub fn new(total: u64, unit: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return ProgressBar(None);
        }
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit} {{msg}}"))
        {
            bar.set_style(style);
        }
        ProgressBar(Some(bar))
    }

    /// `done` more are finished; `line` is the bar's message, or a line of its own when there is no bar.
    pub fn advance(&self, done: usize, line: &str) {
        match &self.0 {
            Some(bar) => {
                bar.inc(done as u64);
                bar.set_message(line.to_owned());
            }
            None => eprintln!("{line}"),
        }
    }

    /// A step that finishes nothing: the bar's message, or a line.
    pub fn note(&self, line: &str) {
        match &self.0 {
            Some(bar) => bar.set_message(line.to_owned()),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
