//! `edgecache get URL`: fetch through the cache, curl style.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use edgecache::{CacheInfo, CacheMiddleware, CacheMode, CacheStatus, ExpireAfter};
use http::{HeaderName, HeaderValue, Method};

use crate::spec::{CacheSpec, DEFAULT_CACHE};

#[derive(Args)]
pub struct GetArgs {
    /// The URL to fetch.
    url: String,
    /// Print the status line and headers before the body.
    #[arg(short = 'i', long)]
    include: bool,
    /// The request method.
    #[arg(short = 'X', long = "request", default_value = "GET")]
    method: String,
    /// A request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// A request body.
    #[arg(short = 'd', long)]
    data: Option<String>,
    /// The cache: `sqlite:PATH`, `memory`, or `redis://HOST[:PORT]`.
    #[arg(long, default_value = DEFAULT_CACHE, env = "EDGECACHE_CACHE")]
    cache: CacheSpec,
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
    // The URL is not repeated: it may carry credentials.
    let url = reqwest::Url::parse(&args.url).context("invalid URL")?;
    let method =
        Method::from_bytes(args.method.as_bytes()).with_context(|| format!("invalid method {:?}", args.method))?;
    let headers = args
        .headers
        .iter()
        .map(|text| parse_header(text))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut builder = CacheMiddleware::builder()
        .shared_store(args.cache.open().await?)
        .shared(args.shared)
        .ignored_parameters(args.ignore_params);
    if let Some(expire_after) = args.expire_after {
        builder = builder.expire_after(expire_after);
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

    let mut out = std::io::stdout().lock();
    if args.include {
        writeln!(out, "{:?} {}", response.version(), response.status())?;
        for (name, value) in response.headers() {
            writeln!(out, "{}: {}", name, String::from_utf8_lossy(value.as_bytes()))?;
        }
        writeln!(out)?;
    }
    let body = response
        .bytes()
        .await
        .map_err(reqwest::Error::without_url)
        .with_context(|| format!("reading the response body from {shown_url} failed"))?;
    out.write_all(&body)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
