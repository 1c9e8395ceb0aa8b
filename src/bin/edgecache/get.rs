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
    let url = reqwest::Url::parse(&args.url).with_context(|| format!("invalid URL {:?}", args.url))?;
    let method =
        Method::from_bytes(args.method.as_bytes()).with_context(|| format!("invalid method {:?}", args.method))?;
    let headers = args
        .headers
        .iter()
        .map(|text| parse_header(text))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut builder = CacheMiddleware::builder().shared_store(args.cache.open().await?);
    if let Some(expire_after) = args.expire_after {
        builder = builder.expire_after(expire_after);
    }
    if !args.ignore_params.is_empty() {
        let defaults = edgecache::DEFAULT_IGNORED_PARAMETERS
            .iter()
            .map(|name| name.to_string());
        builder = builder.ignored_parameters(defaults.chain(args.ignore_params));
    }
    let cache = builder.build()?;
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
    let response = request
        .send()
        .await
        .with_context(|| format!("request to {} failed", args.url))?;

    let only_if_cached_miss = matches!(args.mode, Mode::OnlyIfCached)
        && response
            .extensions()
            .get::<CacheInfo>()
            .is_some_and(|info| info.status == CacheStatus::Miss);
    if only_if_cached_miss {
        bail!("{} is not in the cache (--mode only-if-cached)", args.url);
    }

    let mut out = std::io::stdout().lock();
    if args.include {
        writeln!(out, "{:?} {}", response.version(), response.status())?;
        for (name, value) in response.headers() {
            writeln!(out, "{}: {}", name, String::from_utf8_lossy(value.as_bytes()))?;
        }
        writeln!(out)?;
    }
    let body = response.bytes().await.context("reading the response body failed")?;
    out.write_all(&body)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
