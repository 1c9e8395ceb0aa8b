//! `edgecache purge akamai …`: Akamai alone, a one-target run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use edgecache::edgegrid::Credentials;
use edgecache_purge::akamai::{Action, FastPurgeClient, Network, ObjectKind, check_objects};
use edgecache_purge::{Objects, Purger, Target, read_objects};

use super::report;

#[derive(Args)]
pub struct AkamaiArgs {
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
    /// What to do with cached copies: invalidate (revalidate with the origin, as Akamai advises) or delete.
    #[arg(long, value_enum, default_value_t = ActionArg::Invalidate)]
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

pub async fn run(args: AkamaiArgs) -> anyhow::Result<ExitCode> {
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
        });
    let options = super::RunOptions {
        journal: None,
        resume: false,
        json: args.json,
        wait: args.wait,
        verify: None,
    };
    let client: Arc<dyn Target> = Arc::new(client);
    super::purge(
        Purger::builder(),
        vec![client],
        1,
        Objects::new(kind, texts),
        &objects,
        options,
    )
    .await
}
