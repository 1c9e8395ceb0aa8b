//! EdgeGrid credentials: from an `.edgerc` file, the environment, or given.

use std::fmt;
use std::path::{Path, PathBuf};

use edgecache_base::ini::{IniError, unquote};

/// Default `max_body`: how much of a POST body the signature covers.
pub const DEFAULT_MAX_BODY: usize = 131_072;

/// Why credentials could not be loaded. Every variant says where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is neither a `[section]`, a `key = value`, a comment nor blank.
    #[error("{}:{line}: {reason}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The section is not in the file.
    #[error("{}: no section [{section}]", path.display())]
    MissingSection {
        /// The file.
        path: PathBuf,
        /// The section looked for.
        section: String,
    },
    /// A required key is missing.
    #[error("{location}: [{section}] has no `{key}`")]
    MissingKey {
        /// The file, or the environment.
        location: String,
        /// The section.
        section: String,
        /// The key.
        key: &'static str,
    },
    /// A value is malformed.
    #[error("{location}: [{section}] `{key}`: {reason}")]
    Invalid {
        /// The file, or the environment.
        location: String,
        /// The section.
        section: String,
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Akamai EdgeGrid credentials.
///
/// `Debug` shows the host and options, never the tokens or the secret.
///
/// ```no_run
/// use edgecache::edgegrid::Credentials;
///
/// // `~/.edgerc`, section `[default]`, unless AKAMAI_EDGERC / AKAMAI_EDGERC_SECTION
/// // or AKAMAI_HOST, AKAMAI_CLIENT_TOKEN, AKAMAI_CLIENT_SECRET, AKAMAI_ACCESS_TOKEN say otherwise.
/// let credentials = Credentials::load(None, None)?;
/// # Ok::<(), edgecache::edgegrid::CredentialsError>(())
/// ```
#[derive(Clone)]
pub struct Credentials {
    pub(crate) host: String,
    pub(crate) client_token: String,
    pub(crate) client_secret: String,
    pub(crate) access_token: String,
    pub(crate) max_body: usize,
    pub(crate) headers_to_sign: Vec<String>,
    pub(crate) account_key: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("host", &self.host)
            .field("max_body", &self.max_body)
            .field("headers_to_sign", &self.headers_to_sign)
            .field("account_key", &self.account_key.as_ref().map(|_| "set"))
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Credentials given directly. The host may carry a scheme or a trailing
    /// `/` (both removed); anything else after the authority is an error.
    pub fn new(
        host: &str,
        client_token: impl Into<String>,
        client_secret: impl Into<String>,
        access_token: impl Into<String>,
    ) -> Result<Self, CredentialsError> {
        let host = normalize_host(host).map_err(|reason| CredentialsError::Invalid {
            location: "credentials".into(),
            section: "-".into(),
            key: "host".into(),
            reason,
        })?;
        Ok(Self {
            host,
            client_token: client_token.into(),
            client_secret: client_secret.into(),
            access_token: access_token.into(),
            max_body: DEFAULT_MAX_BODY,
            headers_to_sign: Vec::new(),
            account_key: None,
        })
    }

    /// The API host these credentials sign for (`akab-….luna.akamaiapis.net`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// How much of a POST body the signature covers. Default: 131072.
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    /// Headers the signature covers, in order (names are case-insensitive).
    pub fn with_headers_to_sign<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.headers_to_sign = names.into_iter().map(|name| name.into().to_ascii_lowercase()).collect();
        self
    }

    /// Acts on behalf of another account (`accountSwitchKey`).
    pub fn with_account_key(mut self, account_key: impl Into<String>) -> Self {
        self.account_key = Some(account_key.into());
        self
    }

    /// Loads credentials as the Akamai tools do: from `AKAMAI_HOST`,
    /// `AKAMAI_CLIENT_TOKEN`, `AKAMAI_CLIENT_SECRET` and `AKAMAI_ACCESS_TOKEN`
    /// (`AKAMAI_{SECTION}_…` for a named section) when all four are set;
    /// otherwise from the `.edgerc` file (`path`, else `$AKAMAI_EDGERC`, else
    /// `~/.edgerc`), section `section`, else `$AKAMAI_EDGERC_SECTION`, else
    /// `default`.
    pub fn load(path: Option<&Path>, section: Option<&str>) -> Result<Self, CredentialsError> {
        let section = section
            .map(str::to_owned)
            .or_else(|| std::env::var("AKAMAI_EDGERC_SECTION").ok())
            .unwrap_or_else(|| "default".to_owned());
        if let Some(credentials) = Self::from_environment(&section)? {
            return Ok(credentials);
        }
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("AKAMAI_EDGERC").map(PathBuf::from))
            .unwrap_or_else(|| std::env::home_dir().unwrap_or_default().join(".edgerc"));
        Self::from_edgerc(&path, &section)
    }

    fn from_environment(section: &str) -> Result<Option<Self>, CredentialsError> {
        let prefix = if section == "default" {
            "AKAMAI_".to_owned()
        } else {
            format!("AKAMAI_{}_", section.to_ascii_uppercase().replace('-', "_"))
        };
        let var = |name: &str| std::env::var(format!("{prefix}{name}")).ok();
        let (Some(host), Some(client_token), Some(client_secret), Some(access_token)) = (
            var("HOST"),
            var("CLIENT_TOKEN"),
            var("CLIENT_SECRET"),
            var("ACCESS_TOKEN"),
        ) else {
            return Ok(None);
        };
        let location = format!("environment ({prefix}*)");
        let invalid = |key: &str, reason: String| CredentialsError::Invalid {
            location: location.clone(),
            section: section.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let host = normalize_host(&host).map_err(|reason| invalid("HOST", reason))?;
        let mut credentials = Self::new(&host, client_token, client_secret, access_token)?;
        if let Some(max_body) = var("MAX_BODY") {
            credentials.max_body = max_body
                .parse()
                .map_err(|_| invalid("MAX_BODY", format!("{max_body:?} is not a number")))?;
        }
        Ok(Some(credentials))
    }

    /// Reads a section of an `.edgerc` file. Values may be quoted; `max_body`
    /// (or `max-body`), `headers_to_sign` (comma list) and `account_key` are
    /// optional. Warns once when the file is readable by other users.
    pub fn from_edgerc(path: &Path, section: &str) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        edgecache_base::ini::warn_if_shared(path);
        let values = edgecache_base::ini::section(&text, section).map_err(|error| match error {
            IniError::Syntax { line, reason } => CredentialsError::Syntax {
                path: path.to_path_buf(),
                line,
                reason: reason.to_owned(),
            },
            IniError::MissingSection => CredentialsError::MissingSection {
                path: path.to_path_buf(),
                section: section.to_owned(),
            },
        })?;
        let location = path.display().to_string();
        let get = |key: &'static str| {
            values
                .iter()
                .find(|(name, _, _)| name == key)
                .map(|(_, value, _)| value.clone())
                .ok_or_else(|| CredentialsError::MissingKey {
                    location: location.clone(),
                    section: section.to_owned(),
                    key,
                })
        };
        let invalid = |key: &str, line: usize, reason: String| CredentialsError::Invalid {
            location: format!("{location}:{line}"),
            section: section.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let host_line = values
            .iter()
            .find(|(name, _, _)| name == "host")
            .map_or(0, |(_, _, line)| *line);
        let host = normalize_host(&get("host")?).map_err(|reason| invalid("host", host_line, reason))?;
        let mut credentials = Self {
            host,
            client_token: get("client_token")?,
            client_secret: get("client_secret")?,
            access_token: get("access_token")?,
            max_body: DEFAULT_MAX_BODY,
            headers_to_sign: Vec::new(),
            account_key: None,
        };
        for (name, value, line) in &values {
            match name.as_str() {
                "max_body" | "max-body" => {
                    credentials.max_body = value
                        .parse()
                        .map_err(|_| invalid(name, *line, format!("{value:?} is not a number")))?;
                }
                "headers_to_sign" => {
                    credentials = credentials
                        .with_headers_to_sign(value.split(',').map(str::trim).filter(|name| !name.is_empty()));
                }
                "account_key" if !value.is_empty() => credentials.account_key = Some(value.clone()),
                _ => {}
            }
        }
        Ok(credentials)
    }
}

/// `akab-x.luna.akamaiapis.net`, from that or `https://akab-x…/`.
fn normalize_host(host: &str) -> Result<String, String> {
    let host = unquote(host.trim());
    let host = host
        .strip_prefix("https://")
        .or_else(|| host.strip_prefix("http://"))
        .unwrap_or(host);
    let host = host.strip_suffix('/').unwrap_or(host);
    if host.is_empty() {
        return Err("is empty".into());
    }
    if host.contains(['/', '?', '#', ' ', '@']) {
        return Err(format!(
            "{host:?} is not a host name (expected akab-….luna.akamaiapis.net)"
        ));
    }
    Ok(host.to_ascii_lowercase())
}
