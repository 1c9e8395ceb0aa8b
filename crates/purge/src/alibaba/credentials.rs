//! Alibaba Cloud credentials: given, from the environment, or from
//! `~/.alibabacloud/credentials`.

use std::fmt;
use std::path::{Path, PathBuf};

use edgecache_base::ini::IniError;

/// Why credentials could not be found or read. Each says where it looked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// No variables set and no credentials file.
    #[error(
        "no Alibaba Cloud credentials: set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, \
         or write {} (or point ALIBABA_CLOUD_CREDENTIALS_FILE at one)", file.display()
    )]
    NotFound {
        /// The credentials file looked for.
        file: PathBuf,
    },
    /// Only one of the key id and secret variables is set.
    #[error("{set} is set but {missing} is not")]
    PartialEnvironment {
        /// The variable that is set.
        set: &'static str,
        /// The one that is missing.
        missing: &'static str,
    },
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not INI.
    #[error("{}:{line}: {reason}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The profile is not in the file.
    #[error("{}: no profile [{profile}]", path.display())]
    MissingProfile {
        /// The file.
        path: PathBuf,
        /// The profile looked for.
        profile: String,
    },
    /// The profile lacks a key, or has one edgecache cannot use.
    #[error("{path}: [{profile}] {reason}")]
    Profile {
        /// The file (with `:line` when a line is at fault).
        path: String,
        /// The profile.
        profile: String,
        /// What is wrong.
        reason: String,
    },
}

/// An AccessKey pair, optionally with an STS security token.
///
/// `Debug` shows the key id only, never the secret or the token.
///
/// ```no_run
/// use edgecache_purge::alibaba::Credentials;
///
/// // ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET (/ _SECURITY_TOKEN), else the
/// // `default` profile (or $ALIBABA_CLOUD_PROFILE) of ~/.alibabacloud/credentials.
/// let credentials = Credentials::load(None)?;
/// // Or given directly:
/// let credentials = Credentials::new("LTAI5t…", "secret").with_security_token("CAIS…");
/// # Ok::<(), edgecache_purge::alibaba::CredentialsError>(())
/// ```
#[derive(Clone)]
pub struct Credentials {
    pub(crate) access_key_id: String,
    pub(crate) access_key_secret: String,
    pub(crate) security_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("security_token", &self.security_token.as_ref().map(|_| "set"))
            .finish_non_exhaustive()
    }
}

const ID_VARIABLE: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
const SECRET_VARIABLE: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";

impl Credentials {
    /// An AccessKey pair given directly.
    pub fn new(access_key_id: impl Into<String>, access_key_secret: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            access_key_secret: access_key_secret.into(),
            security_token: None,
        }
    }

    /// Adds an STS security token (sent as `x-acs-security-token`).
    pub fn with_security_token(mut self, token: impl Into<String>) -> Self {
        self.security_token = Some(token.into());
        self
    }

    /// The AccessKey id.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// Loads credentials as Alibaba Cloud's SDKs do: from
    /// `ALIBABA_CLOUD_ACCESS_KEY_ID`, `ALIBABA_CLOUD_ACCESS_KEY_SECRET` and
    /// the optional `ALIBABA_CLOUD_SECURITY_TOKEN`; else from the credentials
    /// file (`$ALIBABA_CLOUD_CREDENTIALS_FILE`, else
    /// `~/.alibabacloud/credentials`), profile `profile`, else
    /// `$ALIBABA_CLOUD_PROFILE`, else `default`.
    pub fn load(profile: Option<&str>) -> Result<Self, CredentialsError> {
        let variable = |name| std::env::var(name).ok().filter(|value: &String| !value.is_empty());
        match (variable(ID_VARIABLE), variable(SECRET_VARIABLE)) {
            (Some(id), Some(secret)) => {
                let credentials = Self::new(id, secret);
                return Ok(match variable("ALIBABA_CLOUD_SECURITY_TOKEN") {
                    Some(token) => credentials.with_security_token(token),
                    None => credentials,
                });
            }
            (Some(_), None) => {
                return Err(CredentialsError::PartialEnvironment {
                    set: ID_VARIABLE,
                    missing: SECRET_VARIABLE,
                });
            }
            (None, Some(_)) => {
                return Err(CredentialsError::PartialEnvironment {
                    set: SECRET_VARIABLE,
                    missing: ID_VARIABLE,
                });
            }
            (None, None) => {}
        }
        let profile = profile
            .map(str::to_owned)
            .or_else(|| variable("ALIBABA_CLOUD_PROFILE"))
            .unwrap_or_else(|| "default".to_owned());
        let (file, named) = match std::env::var_os("ALIBABA_CLOUD_CREDENTIALS_FILE") {
            Some(file) => (PathBuf::from(file), true),
            None => (
                std::env::home_dir()
                    .unwrap_or_default()
                    .join(".alibabacloud/credentials"),
                false,
            ),
        };
        if !named && !file.exists() {
            return Err(CredentialsError::NotFound { file });
        }
        Self::from_file(&file, &profile)
    }

    /// Reads a profile of a credentials file:
    ///
    /// ```ini
    /// [default]
    /// type = access_key
    /// access_key_id = LTAI5t…
    /// access_key_secret = …
    /// ```
    ///
    /// `type = sts` with a `security_token` is read too. Warns once when the
    /// file is readable by other users.
    pub fn from_file(path: &Path, profile: &str) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        edgecache_base::ini::warn_if_shared(path);
        let values = edgecache_base::ini::section(&text, profile).map_err(|error| match error {
            IniError::Syntax { line, reason } => CredentialsError::Syntax {
                path: path.to_path_buf(),
                line,
                reason: reason.to_owned(),
            },
            IniError::MissingSection => CredentialsError::MissingProfile {
                path: path.to_path_buf(),
                profile: profile.to_owned(),
            },
        })?;
        let get = |key: &str| {
            values
                .iter()
                .find(|(name, _, _)| name == key)
                .map(|(_, value, line)| (value.clone(), *line))
        };
        let problem = |location: String, reason: String| CredentialsError::Profile {
            path: location,
            profile: profile.to_owned(),
            reason,
        };
        let kind = get("type").unwrap_or_else(|| ("access_key".into(), 0));
        if !matches!(kind.0.as_str(), "access_key" | "sts") {
            return Err(problem(
                format!("{}:{}", path.display(), kind.1),
                format!(
                    "has `type = {}`; edgecache reads `access_key` and `sts` profiles",
                    kind.0
                ),
            ));
        }
        let required = |key: &str| {
            get(key)
                .filter(|(value, _)| !value.is_empty())
                .map(|(value, _)| value)
                .ok_or_else(|| problem(path.display().to_string(), format!("has no `{key}`")))
        };
        let credentials = Self::new(required("access_key_id")?, required("access_key_secret")?);
        Ok(if kind.0 == "sts" {
            credentials.with_security_token(required("security_token")?)
        } else {
            credentials
        })
    }
}
