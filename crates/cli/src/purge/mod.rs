//! `edgecache purge …`: purge a URL, a prefix or a tag from every layer the
//! targets file names, in layer order, with one report; `purge akamai` and
//! `purge alibaba` for one CDN with all of its options.

mod akamai;
mod alibaba;
mod report;
pub(crate) mod targets;
mod verify;
mod via;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use edgecache_purge::{ObjectKind, Objects, PurgeRunError, Purger, Target, read_objects};

#[derive(Args)]
pub struct PurgeArgs {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Purge URLs everywhere the targets file names.
    Url(RunArgs),
    /// Purge every URL under a prefix (`https://www.example.com/static/`).
    Prefix(RunArgs),
    /// Purge cache tags (`Edge-Cache-Tag`, `Cache-Tag`, `Surrogate-Key`).
    Tag(RunArgs),
    /// Purge every URL of a host name (`www.example.com`): Cloudflare (the other targets skip it).
    Host(RunArgs),
    /// Purge Akamai CP codes (the other targets skip them).
    Cpcode(RunArgs),
    /// Purge Alibaba Cloud refresh patterns (the other targets skip them).
    Regex(RunArgs),
    /// Purge everything at every target that can (Cloudflare, Fastly, the cache); needs --yes.
    Everything(EverythingArgs),
    /// List the targets file's targets, and whether each is reachable and credentialed.
    Targets(TargetsArgs),
    /// Akamai Fast Purge v3 alone.
    Akamai(akamai::AkamaiArgs),
    /// Alibaba Cloud CDN refresh and prefetch alone.
    Alibaba(alibaba::AlibabaArgs),
    /// Check, without purging, whether URLs are gone at every target since a time.
    Verify(verify::VerifyArgs),
}

#[derive(Args)]
struct EverythingArgs {
    /// Yes, purge everything: without it nothing is sent.
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct TargetsArgs {
    /// The targets file [default: $EDGECACHE_TARGETS, else ./edgecache.toml].
    #[arg(long = "targets", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    /// The objects.
    objects: Vec<String>,
    /// Read objects from a file, one per line (`-` for standard input; blank lines and `#` comments skipped).
    #[arg(short = 'r', long = "file")]
    files: Vec<PathBuf>,
    /// The targets file [default: $EDGECACHE_TARGETS, else ./edgecache.toml].
    #[arg(long = "targets", value_name = "FILE")]
    targets: Option<PathBuf>,
    /// Only these targets (comma-separated names: cache, versions, akamai, alibaba, cloudflare, fastly).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Purge every target at once instead of layer by layer.
    #[arg(long)]
    parallel: bool,
    /// When a layer fails, send nothing to the layers after it.
    #[arg(long)]
    stop_on_failure: bool,
    /// Record what each target accepted here, so an interrupted run can be resumed.
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Continue the run recorded in --journal: what it recorded is not sent again.
    #[arg(long, requires = "journal")]
    resume: bool,
    /// Print the results as JSON (one record per target and object; see the README).
    #[arg(long)]
    json: bool,
    /// Cloudflare's zone id, over the targets file's.
    #[arg(long)]
    zone: Option<String>,
    /// Fastly soft purges: mark stale instead of removing.
    #[arg(long)]
    soft: bool,
    /// Alibaba Cloud: refresh even what the origin reports unchanged (directories and patterns
    /// otherwise revalidate by Last-Modified).
    #[arg(long)]
    force: bool,
    /// Then ask each target whether each URL is gone: evicted, still cached or unknown.
    /// Exits non-zero when anything is still cached after --verify-timeout.
    #[arg(long)]
    verify: bool,
    /// After --verify, fetch each URL purged everywhere and cached nowhere once through its
    /// edge, within the per-host bound (Alibaba Cloud: its own prefetch).
    #[arg(long, requires = "verify")]
    rewarm: bool,
    /// Send the purge to this versioned server (`edgecache serve --purge-targets`), which holds the
    /// CDN credentials, and follow it there; the token is $EDGECACHE_SERVER_TOKEN. A targets file
    /// whose `versions` target says `via = true` does the same.
    #[arg(long, value_name = "URL", conflicts_with_all = ["journal", "parallel", "stop_on_failure"])]
    via: Option<String>,
    /// The URLs to check after a prefix, tag or host purge, one per line (`-` for standard input).
    #[arg(long = "verify-urls", value_name = "FILE", requires = "verify")]
    verify_urls: Option<PathBuf>,
    #[command(flatten)]
    verify_options: verify::VerifyOptions,
}

pub async fn run(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let (kind, args) = match args.command {
        Command::Url(args) => (ObjectKind::Url, args),
        Command::Prefix(args) => (ObjectKind::Prefix, args),
        Command::Tag(args) => (ObjectKind::Tag, args),
        Command::Host(args) => (ObjectKind::Host, args),
        Command::Cpcode(args) => (ObjectKind::CpCode, args),
        Command::Regex(args) => (ObjectKind::Regex, args),
        Command::Everything(args) => {
            if !args.yes {
                bail!("`purge everything` empties every cache the targets file names that can be emptied: add --yes");
            }
            if !args.run.objects.is_empty() || !args.run.files.is_empty() {
                bail!("`purge everything` takes no objects");
            }
            (ObjectKind::Everything, args.run)
        }
        Command::Targets(args) => return list_targets(args).await,
        Command::Akamai(args) => return akamai::run(args).await,
        Command::Alibaba(args) => return alibaba::run(args).await,
        Command::Verify(args) => return verify::run(args).await,
    };
    check_resume(args.resume, args.journal.as_deref())?;
    let objects = if kind == ObjectKind::Everything {
        read_objects(&[edgecache_purge::EVERYTHING.to_owned()], &[] as &[PathBuf])?
    } else {
        read_objects(&args.objects, &args.files).context("reading objects")?
    };
    // An empty list purges nothing: never everything.
    if objects.is_empty() {
        bail!("nothing to purge: give objects as arguments or with -r FILE");
    }
    let path = targets::path(args.targets);
    let server = match args.via {
        Some(url) => Some(via::Server::new(Some(url), None)),
        None => targets::via(&path)?,
    };
    if let Some(server) = server {
        if args.journal.is_some() || args.parallel || args.stop_on_failure {
            bail!(
                "{}: the server runs this purge (`via = true`): --journal, --parallel and --stop-on-failure apply only to purges run here",
                path.display()
            );
        }
        let request = via::Request {
            kind,
            objects: objects.iter().map(|object| object.text.clone()).collect(),
            only: args.only.clone(),
            verify: args.verify,
        };
        return via::run(server, request, &objects, args.json).await;
    }
    let specs = targets::read(&path, &args.only)?;
    let overrides = targets::Overrides {
        zone: args.zone,
        soft: args.soft,
        force: args.force,
    };
    let opened = specs
        .iter()
        .map(|spec| spec.open(&overrides))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let taking = opened.iter().filter(|target| target.takes(kind).is_ok()).count();
    let builder = Purger::builder()
        .parallel(args.parallel)
        .stop_on_failure(args.stop_on_failure);
    let verify = if args.verify {
        Some(args.verify_options.to_verify(args.rewarm, args.verify_urls.as_ref())?)
    } else {
        None
    };
    let options = RunOptions {
        journal: args.journal,
        resume: args.resume,
        json: args.json,
        wait: false,
        verify,
    };
    purge(
        builder,
        opened,
        taking,
        Objects::new(kind, sourced_texts(&objects)),
        &objects,
        options,
    )
    .await
}

/// How a run is journaled and printed.
pub struct RunOptions {
    pub journal: Option<PathBuf>,
    pub resume: bool,
    pub json: bool,
    /// Wait until the CDNs' estimates have passed before returning.
    pub wait: bool,
    /// Check each URL at each target afterwards (`--verify`).
    pub verify: Option<edgecache_purge::Verify>,
}

/// Runs the purger over `targets`, with one progress bar, and prints the
/// report: shared by every purge command.
pub async fn purge(
    builder: edgecache_purge::PurgerBuilder,
    targets: Vec<Arc<dyn Target>>,
    taking: usize,
    objects: Objects,
    sourced: &[edgecache_purge::SourcedObject],
    options: RunOptions,
) -> anyhow::Result<ExitCode> {
    let bar = report::ProgressBar::new((objects.len() * taking) as u64, "objects");
    let follower = bar.clone();
    let mut builder = builder
        .on_progress(move |event| follower.follow(event))
        .stop_when(report::interrupted());
    for target in targets {
        builder = builder.target(target);
    }
    if let Some(journal) = &options.journal {
        builder = builder.journal(journal, options.resume);
    }
    let purger = builder.build();
    let purged = purger.purge(objects).await;
    bar.finish();
    let purged = match purged {
        Ok(purged) => purged,
        Err(PurgeRunError::Invalid(invalid)) => return Err(report::invalid(sourced, &invalid)),
        Err(error) => return Err(error.into()),
    };
    let mut results = report::results(purged.lines(), sourced);
    let verification = match options.verify {
        Some(verify) => {
            eprintln!("purged; checking what each target serves now…");
            let verification = purger.verify(&purged, verify).await?;
            if verification.checks.is_empty() {
                eprintln!(
                    "warning: nothing to check: no target knows which URLs these objects cover; name them with --verify-urls FILE"
                );
            }
            verify::attach(&mut results, &verification, sourced);
            Some(verification)
        }
        None => None,
    };
    report::print(&results, options.json)?;
    report::summary(&purged, options.journal.as_deref());
    if let Some(verification) = &verification {
        verify::summary(verification);
        return Ok(verify::exit_code(purged.is_success(), verification));
    }
    if options.wait {
        let longest = purged
            .lines()
            .filter_map(|line| line.outcome.estimated_seconds)
            .max()
            .unwrap_or_default();
        if longest > 0 {
            eprintln!("waiting {longest}s for the CDN's estimate to pass…");
            tokio::time::sleep(std::time::Duration::from_secs(longest)).await;
        }
    }
    Ok(if purged.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn sourced_texts(objects: &[edgecache_purge::SourcedObject]) -> Vec<String> {
    objects.iter().map(|object| object.text.clone()).collect()
}

/// A mistyped journal path would otherwise start a fresh run and send everything again.
fn check_resume(resume: bool, journal: Option<&std::path::Path>) -> anyhow::Result<()> {
    if resume
        && let Some(journal) = journal
        && !journal.exists()
    {
        bail!(
            "--resume: there is no journal at {}; check the path, or drop --resume to start a run that --journal records",
            journal.display()
        );
    }
    Ok(())
}

async fn list_targets(args: TargetsArgs) -> anyhow::Result<ExitCode> {
    let path = targets::path(args.file);
    let specs = targets::read(&path, &[])?;
    let mut rows = Vec::new();
    let mut all_ok = true;
    for spec in &specs {
        let (layer, state) = match spec.open(&targets::Overrides::default()) {
            Ok(target) => (Some(target.layer()), target.probe().await),
            Err(error) => (None, Err(crate::one_line(&error))),
        };
        all_ok &= state.is_ok();
        rows.push((
            layer,
            serde_json::json!({
                "target": spec.name(),
                "layer": layer.map_or("-", edgecache_purge::Layer::as_str),
                "ok": state.is_ok(),
                "detail": match &state { Ok(found) => found, Err(problem) => problem },
            }),
        ));
    }
    // In the order a run purges them; one that can't be opened, last.
    rows.sort_by_key(|(layer, _)| layer.map_or(u8::MAX, |layer| layer as u8));
    let rows: Vec<serde_json::Value> = rows.into_iter().map(|(_, row)| row).collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("targets from {} (purged in this order):", path.display());
        for row in &rows {
            println!(
                "{}\t{}\t{}\t{}",
                if row["ok"] == true { "ok" } else { "FAILED" },
                row["target"].as_str().unwrap_or_default(),
                row["layer"].as_str().unwrap_or_default(),
                row["detail"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
