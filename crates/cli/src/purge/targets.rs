//! The targets file: which layers `edgecache purge url|prefix|tag` reaches,
//! and how to reach each (`edgecache.toml`, `--targets FILE` or
//! `$EDGECACHE_TARGETS`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use edgecache::CacheMiddleware;
use edgecache::edgegrid::Credentials;
use edgecache::store::Location;
use edgecache_purge::Target;
use edgecache_purge::akamai::{Action, FastPurgeClient, Network};
use edgecache_purge::alibaba::AlibabaCdnClient;
use edgecache_purge::cloudflare::{CloudflarePurge, Plan};
use edgecache_purge::fastly::FastlyPurge;
use serde::Deserialize;
use toml::Spanned;

/// The file's shape: `[[target]]` tables, read flat so that every error
/// has the line of the field it is about.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsFile {
    #[serde(default)]
    target: Vec<RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    kind: Spanned<String>,
    store: Option<Spanned<String>>,
    server: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    via: Option<Spanned<bool>>,
    edgerc: Option<Spanned<PathBuf>>,
    section: Option<Spanned<String>>,
    network: Option<Spanned<NetworkSpec>>,
    action: Option<Spanned<ActionSpec>>,
    scheme: Option<Spanned<String>>,
    profile: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    zone: Option<Spanned<String>>,
    plan: Option<Spanned<Plan>>,
    service: Option<Spanned<String>>,
    soft: Option<Spanned<bool>>,
    force: Option<Spanned<bool>>,
    api_base: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
}

/// A credential from the file: never shown in `Debug` or errors.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A problem at a byte offset of the file.
type Located = (usize, String);

impl RawTarget {
    /// A known kind, and only the fields it takes.
    fn check_fields(&self) -> Result<(), Located> {
        let kind = self.kind.get_ref();
        // A field another kind takes is a mistake worth naming, not ignoring.
        let fields: [(&str, Option<usize>); 18] = [
            ("store", self.store.as_ref().map(|f| f.span().start)),
            ("server", self.server.as_ref().map(|f| f.span().start)),
            ("token_env", self.token_env.as_ref().map(|f| f.span().start)),
            ("via", self.via.as_ref().map(|f| f.span().start)),
            ("edgerc", self.edgerc.as_ref().map(|f| f.span().start)),
            ("section", self.section.as_ref().map(|f| f.span().start)),
            ("network", self.network.as_ref().map(|f| f.span().start)),
            ("action", self.action.as_ref().map(|f| f.span().start)),
            ("scheme", self.scheme.as_ref().map(|f| f.span().start)),
            ("profile", self.profile.as_ref().map(|f| f.span().start)),
            ("endpoint", self.endpoint.as_ref().map(|f| f.span().start)),
            ("zone", self.zone.as_ref().map(|f| f.span().start)),
            ("plan", self.plan.as_ref().map(|f| f.span().start)),
            ("service", self.service.as_ref().map(|f| f.span().start)),
            ("soft", self.soft.as_ref().map(|f| f.span().start)),
            ("force", self.force.as_ref().map(|f| f.span().start)),
            ("api_base", self.api_base.as_ref().map(|f| f.span().start)),
            ("token", self.token.as_ref().map(|f| f.span().start)),
        ];
        let takes: &[&str] = match kind.as_str() {
            "cache" => &["store"],
            "versions" => &["server", "token_env", "via"],
            "akamai" => &["edgerc", "section", "network", "action", "scheme"],
            "alibaba" => &["profile", "endpoint", "force"],
            "cloudflare" => &["zone", "plan", "api_base", "token"],
            "fastly" => &["service", "soft", "api_base", "token"],
            other => {
                return Err((
                    self.kind.span().start,
                    format!(
                        "kind {other:?}: expected one of `cache`, `versions`, `akamai`, `alibaba`, `cloudflare`, `fastly`"
                    ),
                ));
            }
        };
        for (name, at) in fields {
            if let Some(at) = at
                && !takes.contains(&name)
            {
                return Err((
                    at,
                    format!(
                        "`{name}` does not apply to kind `{kind}` (it takes: {})",
                        takes.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn into_spec(self) -> Result<TargetSpec, Located> {
        self.check_fields()?;
        let kind = self.kind.get_ref().clone();
        let value = |field: Option<Spanned<String>>| field.map(Spanned::into_inner);
        Ok(match kind.as_str() {
            "cache" => TargetSpec::Cache {
                store: value(self.store),
            },
            "versions" => TargetSpec::Versions {
                server: value(self.server),
                token_env: value(self.token_env),
                via: self.via.is_some_and(|via| *via.get_ref()),
            },
            "akamai" => TargetSpec::Akamai {
                edgerc: self.edgerc.map(Spanned::into_inner),
                section: value(self.section),
                network: self.network.map(Spanned::into_inner).unwrap_or_default(),
                action: self.action.map(Spanned::into_inner).unwrap_or_default(),
                scheme: value(self.scheme),
            },
            "alibaba" => TargetSpec::Alibaba {
                profile: value(self.profile),
                endpoint: value(self.endpoint),
                force: self.force.map(Spanned::into_inner).unwrap_or_default(),
            },
            "cloudflare" => TargetSpec::Cloudflare {
                zone: value(self.zone),
                plan: self.plan.map(Spanned::into_inner).unwrap_or_default(),
                api_base: value(self.api_base),
                token: value(self.token).map(Secret),
            },
            _ => TargetSpec::Fastly {
                service: value(self.service),
                soft: self.soft.map(Spanned::into_inner).unwrap_or_default(),
                api_base: value(self.api_base),
                token: value(self.token).map(Secret),
            },
        })
    }
}

/// One `[[target]]`. Every field is documented in the README.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// A client cache.
    Cache {
        /// `sqlite:PATH`, `memory` or `redis://…` [default: the default cache].
        store: Option<String>,
    },
    /// The versioned server.
    Versions {
        /// Its URL [default: $EDGECACHE_SERVER_URL, else http://127.0.0.1:8008].
        server: Option<String>,
        /// The variable holding its bearer token [default: EDGECACHE_SERVER_TOKEN].
        token_env: Option<String>,
        /// Send every purge to this server (`edgecache serve --purge-targets`),
        /// which purges at its own targets, instead of calling them from here.
        via: bool,
    },
    /// Akamai Fast Purge.
    Akamai {
        /// The `.edgerc` file [default: $AKAMAI_EDGERC or ~/.edgerc].
        edgerc: Option<PathBuf>,
        /// Its section [default: $AKAMAI_EDGERC_SECTION or `default`].
        section: Option<String>,
        /// `production` (default) or `staging`.
        network: NetworkSpec,
        /// `invalidate` (default) or `delete`.
        action: ActionSpec,
        /// `https` (default), or `http` for a local stand-in.
        scheme: Option<String>,
    },
    /// Alibaba Cloud CDN refresh.
    Alibaba {
        /// The credentials file's profile [default: $ALIBABA_CLOUD_PROFILE or `default`].
        profile: Option<String>,
        /// The API endpoint [default: the public one].
        endpoint: Option<String>,
        /// Refresh even what the origin reports unchanged (`Force`); `--force` turns it on too.
        force: bool,
    },
    /// Cloudflare cache purge.
    Cloudflare {
        /// The zone id [default: $CLOUDFLARE_ZONE_ID; `--zone` overrides].
        zone: Option<String>,
        /// `free` (default), `pro`, `business` or `enterprise`: the purge rate.
        plan: Plan,
        /// The API base [default: https://api.cloudflare.com].
        api_base: Option<String>,
        /// The API token [default: $CLOUDFLARE_API_TOKEN].
        token: Option<Secret>,
    },
    /// Fastly purge.
    Fastly {
        /// The service id [default: $FASTLY_SERVICE_ID].
        service: Option<String>,
        /// Soft purges (mark stale); `--soft` turns them on too.
        soft: bool,
        /// The API base [default: https://api.fastly.com].
        api_base: Option<String>,
        /// The API token [default: $FASTLY_API_TOKEN].
        token: Option<Secret>,
    },
}

/// What the command line changes in the file's targets.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--zone`: Cloudflare's zone.
    pub zone: Option<String>,
    /// `--soft`: Fastly soft purges.
    pub soft: bool,
    /// `--force`: Alibaba Cloud refreshes even what the origin reports unchanged.
    pub force: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkSpec {
    #[default]
    Production,
    Staging,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionSpec {
    #[default]
    Invalidate,
    Delete,
}

impl TargetSpec {
    /// The name reports use, and `--only` matches.
    pub fn name(&self) -> &'static str {
        match self {
            TargetSpec::Cache { .. } => "cache",
            TargetSpec::Versions { .. } => "versions",
            TargetSpec::Akamai { .. } => "akamai",
            TargetSpec::Alibaba { .. } => "alibaba",
            TargetSpec::Cloudflare { .. } => "cloudflare",
            TargetSpec::Fastly { .. } => "fastly",
        }
    }

    /// The target, with its credentials read. Nothing is sent.
    pub fn open(&self, overrides: &Overrides) -> anyhow::Result<Arc<dyn Target>> {
        let name = self.name();
        let target: Arc<dyn Target> = match self {
            TargetSpec::Cache { store } => open_cache(store.as_deref())?,
            TargetSpec::Versions { server, token_env, .. } => open_versions(server.as_deref(), token_env.as_deref())?,
            TargetSpec::Akamai {
                edgerc,
                section,
                network,
                action,
                scheme,
            } => open_akamai(edgerc.as_deref(), section.as_deref(), *network, *action, scheme.clone())?,
            TargetSpec::Alibaba {
                profile,
                endpoint,
                force,
            } => {
                let credentials =
                    edgecache_purge::alibaba::Credentials::load(profile.as_deref()).context("target `alibaba`")?;
                let mut client = AlibabaCdnClient::new(credentials)?.force(*force || overrides.force);
                if let Some(endpoint) = endpoint {
                    let url = endpoint
                        .parse()
                        .map_err(|error| anyhow::anyhow!("target `alibaba`: endpoint {endpoint:?}: {error}"))?;
                    client = client.endpoint(url);
                }
                Arc::new(client)
            }
            TargetSpec::Cloudflare {
                zone,
                plan,
                api_base,
                token,
            } => {
                let zone = overrides
                    .zone
                    .clone()
                    .or_else(|| zone.clone())
                    .or_else(|| env("CLOUDFLARE_ZONE_ID"))
                    .context("target `cloudflare`: no zone: give zone = \"…\", --zone, or $CLOUDFLARE_ZONE_ID")?;
                let token = secret(token, "CLOUDFLARE_API_TOKEN", name)?;
                let client = CloudflarePurge::new(zone, token)?.plan(*plan);
                Arc::new(match api_base {
                    Some(base) => client.api_base(base),
                    None => client,
                })
            }
            TargetSpec::Fastly {
                service,
                soft,
                api_base,
                token,
            } => {
                let service = service
                    .clone()
                    .or_else(|| env("FASTLY_SERVICE_ID"))
                    .context("target `fastly`: no service: give service = \"…\" or $FASTLY_SERVICE_ID")?;
                let token = secret(token, "FASTLY_API_TOKEN", name)?;
                let client = FastlyPurge::new(service, token)?.soft(*soft || overrides.soft);
                Arc::new(match api_base {
                    Some(base) => client.api_base(base),
                    None => client,
                })
            }
        };
        Ok(target)
    }
}

fn open_cache(store: Option<&str>) -> anyhow::Result<Arc<dyn Target>> {
    let location = match store {
        Some(text) => Some(
            text.parse::<Location>()
                .map_err(|error| anyhow::anyhow!("target `cache`: store {text:?}: {error}"))?,
        ),
        None => None,
    };
    let store = crate::spec::location_or_default(location)
        .open_existing()
        .context("target `cache`")?;
    Ok(Arc::new(CacheMiddleware::builder().shared_store(store).build()?))
}

fn open_versions(server: Option<&str>, token_env: Option<&str>) -> anyhow::Result<Arc<dyn Target>> {
    let mut builder = edgecache_versions::Client::builder_from_env()?;
    if let Some(server) = server {
        builder = builder.server(server);
    }
    if let Some(variable) = token_env {
        let token = std::env::var(variable)
            .with_context(|| format!("target `versions`: token_env = {variable:?} is not set"))?;
        builder = builder.token(token);
    }
    Ok(Arc::new(builder.build()?))
}

fn open_akamai(
    edgerc: Option<&Path>,
    section: Option<&str>,
    network: NetworkSpec,
    action: ActionSpec,
    scheme: Option<String>,
) -> anyhow::Result<Arc<dyn Target>> {
    let credentials = Credentials::load(edgerc, section).context("target `akamai`")?;
    let client = FastPurgeClient::new(credentials)?
        .network(match network {
            NetworkSpec::Production => Network::Production,
            NetworkSpec::Staging => Network::Staging,
        })
        .action(match action {
            ActionSpec::Delete => Action::Delete,
            ActionSpec::Invalidate => Action::Invalidate,
        });
    Ok(Arc::new(match scheme {
        Some(scheme) => client.scheme(scheme),
        None => client,
    }))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// The file's token, else the variable's; the error names where to put one,
/// never a value.
fn secret(token: &Option<Secret>, variable: &str, target: &str) -> anyhow::Result<String> {
    match token {
        Some(Secret(token)) => Ok(token.clone()),
        None => {
            env(variable).with_context(|| format!("target `{target}`: no token: set ${variable}, or token = \"…\""))
        }
    }
}

/// Where the targets file is: `--targets`, else `$EDGECACHE_TARGETS`, else
/// `edgecache.toml` in the working directory.
pub fn path(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("EDGECACHE_TARGETS").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("edgecache.toml"))
}

/// The server a file with `via = true` sends every purge to, if it has one.
pub fn via(path: &Path) -> anyhow::Result<Option<super::via::Server>> {
    Ok(read(path, &[])?.into_iter().find_map(|spec| match spec {
        TargetSpec::Versions {
            server,
            token_env,
            via: true,
        } => Some(super::via::Server::new(server, token_env.as_deref())),
        _ => None,
    }))
}

/// The targets the file names, `--only` applied.
pub fn read(path: &Path, only: &[String]) -> anyhow::Result<Vec<TargetSpec>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
            "no targets file at {}: write one (see the README's `[[target]]` tables), or give --targets FILE",
            path.display()
        ),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let at = |offset: Option<usize>| match offset {
        Some(offset) => format!(
            "{}:{}",
            path.display(),
            text.get(..offset).unwrap_or(&text).matches('\n').count() + 1
        ),
        None => path.display().to_string(),
    };
    let file: TargetsFile = toml::from_str(&text)
        .map_err(|error| anyhow::anyhow!("{}: {}", at(error.span().map(|span| span.start)), error.message()))?;
    // The server purges at its own targets: a second list here would be
    // silently ignored, or purged twice.
    if file.target.len() > 1
        && let Some(via) = file
            .target
            .iter()
            .filter_map(|target| target.via.as_ref())
            .find(|via| *via.get_ref())
    {
        bail!(
            "{}: `via = true` sends every purge to the server, which purges at its own targets: \
             remove the other targets from this file, or drop `via`",
            at(Some(via.span().start))
        );
    }
    let specs = file
        .target
        .into_iter()
        .map(RawTarget::into_spec)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|(offset, message)| anyhow::anyhow!("{}: {message}", at(Some(offset))))?;
    let mut seen = std::collections::HashSet::new();
    for spec in &specs {
        if !seen.insert(spec.name()) {
            bail!(
                "{}: two targets of kind `{}`: one of each kind per file",
                path.display(),
                spec.name()
            );
        }
    }
    for name in only {
        if !specs.iter().any(|spec| spec.name() == name) {
            bail!(
                "--only {name}: {} names no such target (it names: {})",
                path.display(),
                specs.iter().map(TargetSpec::name).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let chosen: Vec<TargetSpec> = specs
        .into_iter()
        .filter(|spec| only.is_empty() || only.iter().any(|name| name == spec.name()))
        .collect();
    if chosen.is_empty() {
        bail!("{} names no targets: add `[[target]]` tables", path.display());
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Vec<TargetSpec>> {
        let directory = tempfile::tempdir()?;
        let path = directory.path().join("edgecache.toml");
        std::fs::write(&path, text)?;
        read(&path, &[])
    }

    #[test]
    fn a_bad_field_names_the_file_and_line() {
        let error = parse("[[target]]\nkind = \"cache\"\n\n[[target]]\nkind = \"akamai\"\nnetwrok = \"staging\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("edgecache.toml:6"), "{error}");
        assert!(error.contains("netwrok"), "{error}");
        let error = parse("[[target]]\nkind = \"bunny\"\n").unwrap_err().to_string();
        assert!(error.contains("edgecache.toml:2"), "{error}");
        assert!(error.contains("bunny"), "{error}");
        let error = parse("[[target]]\nkind = \"akamai\"\n\nserver = \"https://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("edgecache.toml:4: `server` does not apply to kind `akamai`"),
            "{error}"
        );
        let error = parse("[[target]]\nkind = \"akamai\"\nnetwork = \"stagin\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("edgecache.toml:3"), "{error}");
    }

    #[test]
    fn cdn_fields_belong_to_their_kind_and_tokens_never_show() {
        let specs = parse(
            "[[target]]\nkind = \"cloudflare\"\nzone = \"z\"\nplan = \"pro\"\ntoken = \"cf-file-secret\"\n\n\
             [[target]]\nkind = \"fastly\"\nservice = \"s\"\nsoft = true\ntoken = \"fastly-file-secret\"\n",
        )
        .unwrap();
        let shown = format!("{specs:?}");
        assert!(!shown.contains("file-secret"), "{shown}");
        assert!(matches!(specs[1], TargetSpec::Fastly { soft: true, .. }));
        let error = parse("[[target]]\nkind = \"cloudflare\"\nsoft = true\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("edgecache.toml:3: `soft` does not apply to kind `cloudflare`"),
            "{error}"
        );
        let error = parse("[[target]]\nkind = \"cloudflare\"\nplan = \"gold\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("edgecache.toml:3"), "{error}");
    }

    #[test]
    fn a_server_with_via_stands_alone() {
        let specs = parse("[[target]]\nkind = \"versions\"\nserver = \"https://v.internal\"\nvia = true\n").unwrap();
        assert!(matches!(specs[0], TargetSpec::Versions { via: true, .. }));
        let error = parse("[[target]]\nkind = \"cloudflare\"\n[[target]]\nkind = \"versions\"\nvia = true\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("edgecache.toml:5: `via = true`"), "{error}");
        let error = parse("[[target]]\nkind = \"cache\"\nvia = true\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("`via` does not apply to kind `cache`"), "{error}");
    }

    #[test]
    fn each_kind_once_and_only_picks() {
        assert!(parse("[[target]]\nkind = \"cache\"\n[[target]]\nkind = \"cache\"\n").is_err());
        let specs = parse("[[target]]\nkind = \"cache\"\n[[target]]\nkind = \"versions\"\n").unwrap();
        assert_eq!(
            specs.iter().map(TargetSpec::name).collect::<Vec<_>>(),
            ["cache", "versions"]
        );
    }

    proptest::proptest! {
        #[test]
        fn any_file_text_is_an_answer_not_a_panic(text in "(\\[\\[target\\]\\]\n|kind = \"[a-z]{0,8}\"\n|[ -~]{0,20}\n){0,8}") {
            let _ = parse(&text);
        }
    }
}
