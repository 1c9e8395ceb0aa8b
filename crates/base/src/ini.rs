//! The INI dialect of credentials files (`.edgerc`,
//! `~/.alibabacloud/credentials`): `[section]` headers, `key = value` lines
//! with optional quotes, `#` and `;` comments.

use std::path::Path;

/// Why a section could not be read.
pub enum IniError {
    /// Line `line` (from 1) is malformed.
    Syntax {
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The section is not in the file.
    MissingSection,
}

/// `(key, value, line)` of one section: keys lowercased, values trimmed and unquoted.
pub fn section(text: &str, wanted: &str) -> Result<Vec<(String, String, usize)>, IniError> {
    let mut current: Option<&str> = None;
    let mut found = false;
    let mut values = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let syntax = |reason| IniError::Syntax {
            line: index + 1,
            reason,
        };
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| syntax("a section header must end with `]`"))?
                .trim();
            found |= name == wanted;
            current = Some(name);
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| syntax("expected `key = value`, a `[section]` or a comment"))?;
        match current {
            None => return Err(syntax("a value before any `[section]`")),
            Some(name) if name == wanted => values.push((
                key.trim().to_ascii_lowercase(),
                unquote(value.trim()).to_owned(),
                index + 1,
            )),
            Some(_) => {}
        }
    }
    if found {
        Ok(values)
    } else {
        Err(IniError::MissingSection)
    }
}

/// The value inside one pair of matching quotes, if it has them.
pub fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(quote).and_then(|rest| rest.strip_suffix(quote)) {
            return inner;
        }
    }
    value
}

/// Warns (once per process) that a secrets file is readable by other users.
#[cfg(unix)]
pub fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        WARNED.call_once(|| {
            tracing::warn!(path = %path.display(), "this credentials file is readable by other users: chmod 600 it");
        });
    }
}

#[cfg(not(unix))]
pub fn warn_if_shared(_: &Path) {}
