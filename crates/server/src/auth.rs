//! Bearer tokens, each scoped to groups.
//!
//! A token file has one token per line: `token group,group…` or
//! `token *` for every group, and a third field `purge` when the token may
//! purge the CDNs through the server; blank lines and `#` comments are
//! skipped. `EDGECACHE_SERVER_TOKEN` adds a token for every group (which
//! may not purge). Tokens are kept as SHA-256 digests and compared in
//! constant time, all of them every time. A token is named, in the purge
//! history and the logs, by where it was configured (`tokens.txt:3`),
//! never by itself.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use edgecache_versions::is_valid_tag;

/// Tokens shorter than this are refused: they can be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// Which groups a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Groups {
    /// Every group.
    All,
    /// These groups.
    Only(Vec<String>),
}

impl Groups {
    /// Whether `group` is visible.
    pub fn allows(&self, group: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(groups) => groups.iter().any(|allowed| allowed == group),
        }
    }

    /// The groups, or `None` for all.
    pub fn list(&self) -> Option<Vec<String>> {
        match self {
            Self::All => None,
            Self::Only(groups) => Some(groups.clone()),
        }
    }
}

struct Token {
    digest: [u8; 32],
    grant: Grant,
}

/// What a token may do, and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The groups it sees.
    pub groups: Groups,
    /// Whether it may purge the CDNs through the server.
    pub purge: bool,
    /// Where it was configured (`tokens.txt:3`, `EDGECACHE_SERVER_TOKEN`),
    /// or `loopback` when the server has no tokens: never the token.
    pub name: String,
}

impl Grant {
    /// A server without tokens (loopback only): every group, and purges.
    pub fn loopback() -> Self {
        Self {
            groups: Groups::All,
            purge: true,
            name: "loopback".into(),
        }
    }
}

/// The configured tokens. Its `Debug` shows how many, never a token.
#[derive(Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.tokens.len())
    }
}

/// A token file that doesn't parse: where and why.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct TokenFileError {
    /// The file.
    pub path: String,
    /// The line, from 1 (0 when the file can't be read).
    pub line: usize,
    /// What is wrong (never the token itself).
    pub message: String,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// No tokens: every caller sees every group (loopback only).
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Reads a token file.
    pub fn read(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| TokenFileError {
            path: path.display().to_string(),
            line: 0,
            message: format!("cannot read the token file: {error}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses a token file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, TokenFileError> {
        let mut tokens = Self::default();
        for (index, line) in text.lines().enumerate() {
            let error = |message: String| TokenFileError {
                path: path.to_owned(),
                line: index + 1,
                message,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(token), Some(groups), grant, None) = (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(error(
                    "expected `TOKEN GROUP,GROUP…` or `TOKEN *`, then `purge` if it may purge".into(),
                ));
            };
            let purge = match grant {
                None => false,
                Some("purge") => true,
                Some(other) => {
                    return Err(error(format!("the third field grants `purge`, not `{other}`")));
                }
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(error(format!("the token is shorter than {MIN_TOKEN_LEN} characters")));
            }
            let groups = if groups == "*" {
                Groups::All
            } else {
                let names: Vec<String> = groups.split(',').map(str::to_owned).collect();
                if let Some(bad) = names.iter().find(|name| !is_valid_tag(name)) {
                    return Err(error(format!(
                        "`{bad}` is not a group name (1 to 64 of A-Z a-z 0-9 . _ -)"
                    )));
                }
                Groups::Only(names)
            };
            tokens.tokens.push(Token {
                digest: digest(token),
                grant: Grant {
                    groups,
                    purge,
                    name: format!("{path}:{}", index + 1),
                },
            });
        }
        Ok(tokens)
    }

    /// Adds a token that sees every group (`EDGECACHE_SERVER_TOKEN`); it may not purge.
    pub fn add_all_groups(&mut self, token: &str) {
        self.tokens.push(Token {
            digest: digest(token),
            grant: Grant {
                groups: Groups::All,
                purge: false,
                name: "EDGECACHE_SERVER_TOKEN".into(),
            },
        });
    }

    /// What `presented` grants, if it is a configured token. Every token is
    /// compared, in constant time, whatever matches.
    pub fn check(&self, presented: &str) -> Option<Grant> {
        let presented = digest(presented);
        let mut granted = None;
        for token in &self.tokens {
            if bool::from(token.digest.ct_eq(&presented)) && granted.is_none() {
                granted = Some(token.grant.clone());
            }
        }
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_grants_groups_and_errors_name_the_line() {
        let tokens = Tokens::parse(
            "# ops\nalpha-token-0123456789 reports,maps\n\nroot-token-0123456789 *\n",
            "tokens.txt",
        )
        .unwrap();
        let alpha = tokens.check("alpha-token-0123456789").expect("granted");
        assert_eq!(alpha.groups, Groups::Only(vec!["reports".into(), "maps".into()]));
        assert_eq!((alpha.purge, alpha.name.as_str()), (false, "tokens.txt:2"));
        assert_eq!(
            tokens.check("root-token-0123456789").map(|grant| grant.groups),
            Some(Groups::All)
        );
        assert_eq!(tokens.check("alpha-token-012345678"), None);
        assert!(!format!("{tokens:?}").contains("alpha"));

        let error = Tokens::parse("ok-token-0123456789 a\nshort b\n", "t.txt").unwrap_err();
        assert_eq!((error.line, error.path.as_str()), (2, "t.txt"));
        assert!(!error.to_string().contains("short b"), "{error}");
        let error = Tokens::parse("ok-token-0123456789 bad/group\n", "t.txt").unwrap_err();
        assert!(error.to_string().contains("bad/group"), "{error}");
        assert!(Tokens::parse("ok-token-0123456789\n", "t.txt").is_err());

        // The third field grants purges, and nothing else is accepted there.
        let tokens = Tokens::parse("ops-token-0123456789 * purge\n", "t.txt").unwrap();
        assert!(tokens.check("ops-token-0123456789").expect("granted").purge);
        let error = Tokens::parse("ops-token-0123456789 * admin\n", "t.txt").unwrap_err();
        assert!(error.to_string().contains("`admin`"), "{error}");
    }

    proptest::proptest! {
        #[test]
        fn any_token_file_parses_or_names_a_line_in_it(text in "[ -~\n\t]{0,300}") {
            match Tokens::parse(&text, "t.txt") {
                Ok(tokens) => proptest::prop_assert!(tokens.tokens.len() <= text.lines().count()),
                Err(error) => proptest::prop_assert!(error.line >= 1 && error.line <= text.lines().count()),
            }
        }
    }
}
