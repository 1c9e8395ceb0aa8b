//! `edgecache versions …`: the versioned cache server from the shell.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use edgecache_versions::{Client, Resource, Selection, Source, Strategy, Version, VersionFilter, VersionStatus};
use futures_util::StreamExt;

use crate::get::{closed, parse_header, progress_bar};
use crate::spec::parse_duration;

#[derive(Args)]
#[command(after_help = "\
The server, token, group and fallback come from EDGECACHE_SERVER_URL (default http://127.0.0.1:8008),
EDGECACHE_SERVER_TOKEN, EDGECACHE_GROUP and EDGECACHE_LOCAL_FALLBACK (true/false/1/0), unless given here.

Examples:
  edgecache versions get https://example.org/data.csv --prefer-pinned -o data.csv
  edgecache versions register https://example.org/data.csv --strategy age:1h
  edgecache versions versions RID --json
  edgecache versions pin RID VID --for 7d
  edgecache versions get https://example.org/data.csv --at -1d -o downloads/
  edgecache versions update RID --strategy never --max-unpinned 5")]
pub struct VersionsArgs {
    /// The server's URL [default: $EDGECACHE_SERVER_URL, else http://127.0.0.1:8008].
    #[arg(long, global = true, value_name = "URL")]
    server: Option<String>,
    /// The bearer token [default: $EDGECACHE_SERVER_TOKEN].
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    /// The group [default: $EDGECACHE_GROUP, else `default`].
    #[arg(long, global = true, value_name = "GROUP")]
    group: Option<String>,
    /// Fail instead of fetching from the origin when the server is unreachable.
    #[arg(long, global = true)]
    no_fallback: bool,
    /// Print listings and records as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Action,
}

/// Which version `versions get` serves.
#[derive(Args)]
struct SelectArgs {
    /// Prefer a pinned version.
    #[arg(long)]
    prefer_pinned: bool,
    /// Prefer a version with this tag.
    #[arg(long, value_name = "TAG")]
    prefer_tag: Option<String>,
    /// Prefer this version.
    #[arg(long, value_name = "VID")]
    prefer_version: Option<String>,
    /// Only a pinned version.
    #[arg(long)]
    force_pinned: bool,
    /// Only a version with this tag.
    #[arg(long, value_name = "TAG")]
    force_tag: Option<String>,
    /// Only this version.
    #[arg(long, value_name = "VID")]
    force_version: Option<String>,
    /// The newest version fetched at or before this time: RFC 3339
    /// (`2026-12-01T08:00:00Z`) or a time ago (`-1d`, `-90m`).
    #[arg(long, value_name = "TIME", value_parser = parse_at, allow_hyphen_values = true)]
    at: Option<jiff::Timestamp>,
    /// Fetch a new version first.
    #[arg(long)]
    fresh: bool,
    /// Wait this long for a first version (default 60s).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    wait: Duration,
}

impl From<SelectArgs> for Selection {
    fn from(select: SelectArgs) -> Self {
        Selection {
            force_version: select.force_version,
            force_tag: select.force_tag,
            force_pinned: select.force_pinned,
            prefer_version: select.prefer_version,
            prefer_tag: select.prefer_tag,
            prefer_pinned: select.prefer_pinned,
            at: select.at,
            fresh: select.fresh,
            wait: Some(select.wait.as_secs()),
        }
    }
}

#[derive(Args)]
struct RequestArgs {
    /// The URL.
    url: String,
    /// The method.
    #[arg(short = 'X', long = "request", default_value = "GET", value_name = "METHOD")]
    method: String,
    /// A query parameter, `NAME=VALUE` (repeatable).
    #[arg(long = "query", value_name = "NAME=VALUE")]
    query: Vec<String>,
    /// A request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// When to fetch new versions: `never`, `age:1h`, `cron:0 6 * * *`,
    /// `remote-changed[:6h]`, `on-request[:10m]`, or the API's JSON.
    #[arg(long, value_parser = parse_strategy)]
    strategy: Option<Strategy>,
    /// The request body, sent as it is (`@FILE` reads a file).
    #[arg(long, value_name = "TEXT", conflicts_with = "json_body")]
    body: Option<String>,
    /// The request body as JSON, sent with `Content-Type: application/json`
    /// (`@FILE` reads a file).
    #[arg(long, value_name = "JSON")]
    json_body: Option<String>,
    /// Free-form notes kept with the resource.
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
    /// A link kept with the resource (a ticket, a dashboard).
    #[arg(long, value_name = "URL")]
    link: Option<String>,
    /// Purge the URL and the new version's cache tags at the server's
    /// purge targets whenever a new version's body differs.
    #[arg(long)]
    purge_on_change: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

#[derive(Args)]
struct LimitArgs {
    /// Ready, unpinned versions kept.
    #[arg(long, value_name = "N")]
    max_unpinned: Option<u32>,
    /// Pinned versions allowed.
    #[arg(long, value_name = "N")]
    max_pinned: Option<u32>,
    /// Failed fetches kept for inspection.
    #[arg(long, value_name = "N")]
    max_failed: Option<u32>,
}

#[derive(Subcommand)]
enum Action {
    /// Register a URL (or find it, if registered already) and print its id.
    Register(RequestArgs),
    /// List resources (of the group, when one is given).
    List,
    /// Show a resource.
    Show {
        /// The resource id.
        rid: String,
    },
    /// List a resource's versions, newest first.
    Versions {
        /// The resource id.
        rid: String,
        /// Only this status (pending, downloading, ready, failed).
        #[arg(long)]
        status: Option<String>,
        /// Only versions with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only pinned versions.
        #[arg(long)]
        pinned: bool,
        /// Leave out this many (newest first).
        #[arg(long, default_value_t = 0, value_name = "N")]
        skip: usize,
        /// Show at most this many.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// The version after this one (newer), if any.
    Next {
        /// The resource id.
        rid: String,
        /// The version id.
        vid: String,
    },
    /// The version before this one (older), if any.
    Previous {
        /// The resource id.
        rid: String,
        /// The version id.
        vid: String,
    },
    /// Change a resource's strategy, limits or purge on change.
    Update {
        /// The resource id.
        rid: String,
        /// When to fetch new versions (as for register).
        #[arg(long, value_parser = parse_strategy)]
        strategy: Option<Strategy>,
        /// Whether a new version whose body differs is purged at the
        /// server's purge targets.
        #[arg(long, value_name = "true|false")]
        purge_on_change: Option<bool>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Delete a resource and its versions.
    Delete {
        /// The resource id.
        rid: String,
        /// Delete it even if versions are pinned.
        #[arg(long)]
        force: bool,
    },
    /// Fetch a resource now; print the pending version.
    Fetch {
        /// The resource id.
        rid: String,
    },
    /// Register a URL if needed and write the selected version.
    Get {
        #[command(flatten)]
        request: RequestArgs,
        #[command(flatten)]
        select: SelectArgs,
        /// Where to write the body (`-`: standard output; a directory, or
        /// a path ending in `/`: there, under the server's file name).
        #[arg(short, long, default_value = "-", value_name = "FILE")]
        output: PathBuf,
    },
    /// Pin a version.
    Pin {
        /// The resource id.
        rid: String,
        /// The version id (or `latest`).
        vid: String,
        /// Unpin after this long (e.g. 7d).
        #[arg(long = "for", value_parser = parse_duration, value_name = "DURATION")]
        duration: Option<Duration>,
    },
    /// Unpin a version.
    Unpin {
        /// The resource id.
        rid: String,
        /// The version id.
        vid: String,
    },
    /// Tag a version.
    Tag {
        /// The resource id.
        rid: String,
        /// The version id.
        vid: String,
        /// The tag.
        tag: String,
    },
    /// Remove a tag from a version.
    Untag {
        /// The resource id.
        rid: String,
        /// The version id.
        vid: String,
        /// The tag.
        tag: String,
    },
}

fn parse_strategy(text: &str) -> Result<Strategy, String> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).map_err(|error| format!("not a strategy: {error}"));
    }
    let (kind, argument) = text
        .split_once(':')
        .map_or((text, None), |(kind, argument)| (kind, Some(argument)));
    let seconds = |default: u64| -> Result<u64, String> {
        argument.map_or(Ok(default), |text| parse_duration(text).map(|d| d.as_secs()))
    };
    match kind {
        "never" => Ok(Strategy::Never),
        "age" => Ok(Strategy::Age {
            seconds: seconds(3600)?,
        }),
        "cron" => argument
            .map(Strategy::cron)
            .ok_or_else(|| "cron needs an expression: cron:'0 6 * * *'".into()),
        "remote-changed" | "remote_changed" => Ok(Strategy::RemoteChanged {
            check_every_seconds: seconds(21_600)?,
            fallback_max_age_seconds: 86_400,
        }),
        "on-request" | "on_request" => Ok(Strategy::OnRequest {
            min_interval_seconds: seconds(0)?,
        }),
        _ => Err(format!(
            "`{text}` is not a strategy: never, age:1h, cron:'0 6 * * *', remote-changed[:6h], on-request[:10m], or JSON"
        )),
    }
}

impl LimitArgs {
    fn given(&self) -> bool {
        self.max_unpinned.is_some() || self.max_pinned.is_some() || self.max_failed.is_some()
    }

    /// `limits` with the ones given here instead.
    fn over(&self, mut limits: edgecache_versions::Limits) -> edgecache_versions::Limits {
        limits.max_unpinned = self.max_unpinned.unwrap_or(limits.max_unpinned);
        limits.max_pinned = self.max_pinned.unwrap_or(limits.max_pinned);
        limits.max_failed = self.max_failed.unwrap_or(limits.max_failed);
        limits
    }
}

/// `--at`: an RFC 3339 time, or `-DURATION` for that long ago.
fn parse_at(text: &str) -> Result<jiff::Timestamp, String> {
    if let Some(ago) = text.strip_prefix('-') {
        let ago = parse_duration(ago).map_err(|_| {
            format!("`{text}` is not a time: give RFC 3339 (2026-12-01T08:00:00Z) or a time ago (-1d, -90m)")
        })?;
        let ago = jiff::SignedDuration::try_from(ago).map_err(|_| format!("`{text}` is too long ago"))?;
        return jiff::Timestamp::now()
            .checked_sub(ago)
            .map_err(|_| format!("`{text}` is too long ago"));
    }
    text.parse()
        .map_err(|_| format!("`{text}` is not a time: give RFC 3339 (2026-12-01T08:00:00Z) or a time ago (-1d, -90m)"))
}

/// A `--body` or `--json-body` value: the text, or with `@FILE` the file's.
fn body_text(flag: &str, value: &str) -> anyhow::Result<String> {
    match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("{flag} @{path}: cannot read the file")),
        None => Ok(value.to_owned()),
    }
}

// One short arm per subcommand: the match is the list of them.
pub async fn run(args: VersionsArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args)?;
    let json = args.json;
    match args.action {
        Action::Register(request) => {
            let resource = register(&client, &request).await?;
            let id = resource
                .id()
                .context("the server is unreachable; nothing was registered")?;
            if json {
                print_json(&resource.get().await?)?;
            } else {
                println!("{id}");
            }
        }
        Action::List => {
            // A group given by flag or environment narrows the list; else
            // every group the token sees.
            let group_given =
                args.group.is_some() || std::env::var_os("EDGECACHE_GROUP").is_some_and(|group| !group.is_empty());
            let resources = client.resources(group_given.then(|| client.group())).await?;
            output(json, &resources, |resources| print_resources(resources))?;
        }
        Action::Show { rid } => print_json(&client.resource_by_id(rid).get().await?)?,
        Action::Versions {
            rid,
            status,
            tag,
            pinned,
            skip,
            limit,
        } => {
            let filter = VersionFilter {
                status: status.as_deref().map(parse_status).transpose()?,
                tag,
                pinned: pinned.then_some(true),
            };
            let versions = client.resource_by_id(rid).versions(filter).await?;
            let versions: Vec<Version> = versions
                .into_iter()
                .skip(skip)
                .take(limit.unwrap_or(usize::MAX))
                .collect();
            output(json, &versions, |versions| print_versions(versions))?;
        }
        Action::Next { rid, vid } => {
            let found = client.resource_by_id(rid).version(vid).next().await?;
            return neighbour(json, found, "newer");
        }
        Action::Previous { rid, vid } => {
            let found = client.resource_by_id(rid).version(vid).previous().await?;
            return neighbour(json, found, "older");
        }
        Action::Update {
            rid,
            strategy,
            purge_on_change,
            limits,
        } => {
            let resource = update(&client, rid, strategy, purge_on_change, limits).await?;
            output(json, &resource, |resource| {
                print_resources(std::slice::from_ref(resource))
            })?;
        }
        Action::Delete { rid, force } => {
            client.resource_by_id(rid.clone()).delete(force).await?;
            if !json {
                eprintln!("edgecache: deleted {rid}");
            }
        }
        Action::Fetch { rid } => {
            let version = client.resource_by_id(rid).fetch_now().await?;
            output(json, &version, |version| println!("{} {}", version.id, version.status))?;
        }
        Action::Get {
            request,
            select,
            output,
        } => get(&client, &request, select.into(), &output).await?,
        Action::Pin { rid, vid, duration } => {
            let version = client.resource_by_id(rid).version(vid).pin(duration).await?;
            report(json, &version)?;
        }
        Action::Unpin { rid, vid } => report(json, &client.resource_by_id(rid).version(vid).unpin().await?)?,
        Action::Tag { rid, vid, tag } => report(json, &client.resource_by_id(rid).version(vid).tag(&tag).await?)?,
        Action::Untag { rid, vid, tag } => report(json, &client.resource_by_id(rid).version(vid).untag(&tag).await?)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The client the flags and the environment describe.
fn client(args: &VersionsArgs) -> anyhow::Result<Client> {
    let mut builder = Client::builder_from_env()?;
    if let Some(server) = &args.server {
        builder = builder.server(server.clone());
    }
    if let Some(token) = &args.token {
        builder = builder.token(token.clone());
    }
    if let Some(group) = &args.group {
        builder = builder.group(group.clone());
    }
    if args.no_fallback {
        builder = builder.local_fallback(false);
    }
    Ok(builder.build()?)
}

fn parse_status(status: &str) -> anyhow::Result<VersionStatus> {
    VersionStatus::parse(status)
        .with_context(|| format!("`{status}` is not a status: pending, downloading, ready, failed"))
}

/// `versions update`: the limits given laid over the resource's current ones.
async fn update(
    client: &Client,
    rid: String,
    strategy: Option<Strategy>,
    purge_on_change: Option<bool>,
    limits: LimitArgs,
) -> anyhow::Result<Resource> {
    let handle = client.resource_by_id(rid);
    let limits = match limits.given() {
        true => Some(limits.over(handle.get().await?.limits)),
        false => None,
    };
    if strategy.is_none() && limits.is_none() && purge_on_change.is_none() {
        anyhow::bail!("nothing to change: give --strategy, --purge-on-change or a --max-… limit");
    }
    Ok(handle
        .change(edgecache_versions::Change {
            strategy,
            limits: limits.map(edgecache_versions::LimitsChange::from),
            purge_on_change,
        })
        .await?)
}

/// `versions get`: the selected version's body to stdout (`-`), into a
/// folder, or to a file.
async fn get(client: &Client, request: &RequestArgs, selection: Selection, output: &Path) -> anyhow::Result<()> {
    let resource = register(client, request).await?;
    let content = resource.content(selection).await?;
    match content.source() {
        Source::Server => eprintln!(
            "edgecache: version {} from {}",
            content.version().id,
            client.server().trim_end_matches('/')
        ),
        Source::Local => eprintln!("edgecache: from the origin (server unreachable)"),
    }
    if output.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        let progress = progress_bar(content.version().size);
        let mut stream = Box::pin(content.bytes_stream());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if closed(out.write_all(&chunk))? {
                return Ok(());
            }
            progress.inc(chunk.len() as u64);
        }
        progress.finish_and_clear();
        closed(out.flush())?;
    } else if output.is_dir() || output.as_os_str().to_string_lossy().ends_with('/') {
        let path = content.download_to_dir(output).await?;
        eprintln!("edgecache: wrote {}", path.display());
    } else {
        content.download_to(output).await?;
    }
    Ok(())
}

/// `value` as JSON with `--json`, else as `text` prints it.
fn output<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce(&T)) -> anyhow::Result<()> {
    if json {
        print_json(value)
    } else {
        text(value);
        Ok(())
    }
}

async fn register(client: &Client, request: &RequestArgs) -> anyhow::Result<edgecache_versions::ResourceHandle> {
    let method = http::Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("`{}` is not a method", request.method))?;
    let mut resource = client.resource(method, request.url.clone());
    for pair in &request.query {
        let (name, value) = pair
            .split_once('=')
            .with_context(|| format!("--query `{pair}` is not NAME=VALUE"))?;
        resource = resource.query([(name, value)]);
    }
    for header in &request.headers {
        let (name, value) = parse_header(header)?;
        resource = resource.header(name.as_str(), value.to_str().unwrap_or_default());
    }
    if let Some(strategy) = &request.strategy {
        resource = resource.strategy(strategy.clone());
    }
    if let Some(body) = &request.body {
        resource = resource.body(serde_json::Value::String(body_text("--body", body)?));
    }
    if let Some(json_body) = &request.json_body {
        let text = body_text("--json-body", json_body)?;
        let value = serde_json::from_str(&text).with_context(|| format!("--json-body is not JSON: {text}"))?;
        resource = resource.body(value);
    }
    if request.limits.given() {
        resource = resource.limits(request.limits.over(edgecache_versions::Limits::default()));
    }
    if let Some(description) = &request.description {
        resource = resource.description(description.clone());
    }
    if let Some(link) = &request.link {
        resource = resource.link(link.clone());
    }
    if request.purge_on_change {
        resource = resource.purge_on_change(true);
    }
    Ok(resource.register().await?)
}

/// Prints a neighbouring version; without one, says so and fails.
fn neighbour(json: bool, found: Option<Version>, which: &str) -> anyhow::Result<ExitCode> {
    match found {
        Some(found) => {
            report(json, &found)?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("edgecache: no {which} version");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn report(json: bool, version: &Version) -> anyhow::Result<()> {
    output(json, version, |version| {
        let pinned = match (version.pinned, version.pinned_until) {
            (true, Some(until)) => format!("pinned until {until}"),
            (true, None) => "pinned".into(),
            (false, _) => "not pinned".into(),
        };
        println!("{} {} tags=[{}]", version.id, pinned, version.tags.join(","));
    })
}

fn print_resources(resources: &[Resource]) {
    for resource in resources {
        let strategy = serde_json::to_value(&resource.strategy)
            .ok()
            .and_then(|value| value["kind"].as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "{}  {:<10} {:<14} {} {}",
            resource.id, resource.group, strategy, resource.method, resource.url
        );
    }
}

fn print_versions(versions: &[Version]) {
    for version in versions {
        let fetched = version
            .fetched_at
            .map(|at| at.to_string())
            .unwrap_or_else(|| "-".into());
        let size = version.size.map(|size| size.to_string()).unwrap_or_else(|| "-".into());
        let pinned = if version.pinned { "pinned" } else { "-" };
        println!(
            "{}  {:<11} {:<24} {:>12} {:<6} {}",
            version.id,
            version.status,
            fetched,
            size,
            pinned,
            version.tags.join(",")
        );
    }
}
