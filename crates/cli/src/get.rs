//! `edgecache get URL`: fetch through the cache, curl style.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use edgecache::{CacheInfo, CacheMiddleware, CacheMode, CacheStatus, ExpireAfter};
use http::{HeaderName, HeaderValue, Method};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use edgecache::store::Location;

use crate::spec::location_or_default;

#[derive(Args)]
pub struct GetArgs {
    /// The URL to fetch.
    url: String,
    /// Print the status line and headers before the body.
    #[arg(short = 'i', long)]
    include: bool,
    /// The request method [default: GET, or POST with `-d`, as curl does].
    #[arg(short = 'X', long = "request")]
    method: Option<String>,
    /// A request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// A request body (makes the request a POST unless `-X` says otherwise).
    #[arg(short = 'd', long)]
    data: Option<String>,
    /// Say more on stderr: whether the response was stored, and why not,
    /// and the cache's figures for the request (hits, misses, stores…).
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// The cache: `sqlite:PATH`, `memory`, or `redis://HOST[:PORT]`
    /// [default: $EDGECACHE_CACHE, else http.sqlite in the platform's cache
    /// directory; `edgecache cache path` prints it].
    #[arg(long, env = "EDGECACHE_CACHE")]
    cache: Option<Location>,
    /// Expiry when the response doesn't say: `30s`, `5m`, `2h`, `1d`, `never`, `0`.
    #[arg(long)]
    expire_after: Option<ExpireAfter>,
    /// How this request uses the cache.
    #[arg(long, value_enum, default_value_t = Mode::Default)]
    mode: Mode,
    /// A query/body parameter or header left out of the key and never stored (repeatable).
    #[arg(long = "ignore-param")]
    ignore_params: Vec<String>,
    /// Follow RFC 9111's rules for a cache shared by many users: `private`
    /// responses are not stored, `s-maxage` counts.
    #[arg(long)]
    shared: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Default,
    Refresh,
    ForceRefresh,
    OnlyIfCached,
    NoStore,
}

impl From<Mode> for CacheMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Default => CacheMode::Default,
            Mode::Refresh => CacheMode::Refresh,
            Mode::ForceRefresh => CacheMode::ForceRefresh,
            Mode::OnlyIfCached => CacheMode::OnlyIfCached,
            Mode::NoStore => CacheMode::NoStore,
        }
    }
}

pub(crate) fn parse_header(text: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let Some((name, value)) = text.split_once(':') else {
        bail!("invalid header {text:?}: expected `Name: value`");
    };
    let name = HeaderName::try_from(name.trim()).with_context(|| format!("invalid header name in {text:?}"))?;
    let value = HeaderValue::try_from(value.trim()).with_context(|| format!("invalid header value in {text:?}"))?;
    Ok((name, value))
}

pub async fn run(args: GetArgs) -> anyhow::Result<ExitCode> {
    // Check everything the user typed before touching the cache or network.
    let url = checked_url(&args.url)?;
    let method = match (&args.method, &args.data) {
        (Some(method), _) => {
            Method::from_bytes(method.as_bytes()).with_context(|| format!("invalid method {method:?}"))?
        }
        (None, Some(_)) => Method::POST,
        (None, None) => Method::GET,
    };
    let headers = args
        .headers
        .iter()
        .map(|text| parse_header(text))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut builder = CacheMiddleware::builder()
        .shared_store(location_or_default(args.cache).open_or_step_aside())
        .shared(args.shared)
        .ignored_parameters(args.ignore_params);
    if let Some(expire_after) = args.expire_after {
        builder = builder.expire_after(expire_after);
    }
    if args.verbose {
        crate::figures::record();
    }
    let cache = builder.build()?;
    let shown_url = cache.redact_url(&url);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(cache)
        .build();

    let mut request = client.request(method, url).with_extension(CacheMode::from(args.mode));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    if let Some(data) = args.data {
        request = request.body(data);
    }
    // reqwest's errors name the full URL, credentials and all: show the redacted one.
    let response = request
        .send()
        .await
        .map_err(|error| match error {
            reqwest_middleware::Error::Reqwest(error) => anyhow::Error::new(error.without_url()),
            reqwest_middleware::Error::Middleware(error) => error,
        })
        .with_context(|| format!("request to {shown_url} failed"))?;

    let only_if_cached_miss = matches!(args.mode, Mode::OnlyIfCached)
        && response
            .extensions()
            .get::<CacheInfo>()
            .is_some_and(|info| info.status == CacheStatus::Miss);
    if only_if_cached_miss {
        bail!("{shown_url} is not in the cache (--mode only-if-cached)");
    }

    write_response(response, args.include, &shown_url).await?;
    if args.verbose {
        eprint!("{}", crate::figures::report());
    }
    Ok(ExitCode::SUCCESS)
}

/// An `http` or `https` URL with a host. The URL is not repeated in the
/// error: it may carry credentials.
fn checked_url(text: &str) -> anyhow::Result<reqwest::Url> {
    let url = reqwest::Url::parse(text).context("invalid URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!(
            "unsupported scheme {:?}: edgecache fetches http and https URLs",
            url.scheme()
        );
    }
    // On the text: the parser reads `https:///path` as host `path`.
    let authority = text
        .split_once("://")
        .map_or("", |(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or_default());
    if authority.is_empty() || url.host_str().is_none_or(str::is_empty) {
        bail!("invalid URL: no host");
    }
    Ok(url)
}

/// The response to stdout (with its head for `--include`), streamed as it
/// arrives so memory stays flat for any size; a reader that goes away ends
/// it quietly.
async fn write_response(mut response: reqwest::Response, include: bool, shown_url: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if include {
        let mut head = format!("{:?} {}\n", response.version(), response.status());
        for (name, value) in response.headers() {
            head.push_str(&format!("{}: {}\n", name, String::from_utf8_lossy(value.as_bytes())));
        }
        head.push('\n');
        if closed(out.write_all(head.as_bytes()))? {
            return Ok(());
        }
    }
    let progress = progress_bar(response.content_length());
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(reqwest::Error::without_url)
        .with_context(|| format!("reading the response body from {shown_url} failed"))?
    {
        if closed(out.write_all(&chunk))? {
            return Ok(());
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    closed(out.flush())?;
    Ok(())
}

/// Whether the reader of standard output went away (`get URL | head`):
/// not an error, as for curl.
pub(crate) fn closed(written: std::io::Result<()>) -> anyhow::Result<bool> {
    match written {
        Ok(()) => Ok(false),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
        Err(error) => Err(anyhow::Error::new(error).context("writing to standard output failed")),
    }
}

/// A byte counter on stderr for bodies over 1 MiB (or of unknown size), only
/// when stderr is a terminal.
pub(crate) fn progress_bar(length: Option<u64>) -> ProgressBar {
    const SHOWN_FROM: u64 = 1 << 20;
    if !std::io::stderr().is_terminal() || length.is_some_and(|length| length <= SHOWN_FROM) {
        return ProgressBar::hidden();
    }
    let bar = match length {
        Some(length) => ProgressBar::new(length).with_style(
            ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar
}
