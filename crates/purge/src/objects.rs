//! What can be purged, and the one check every target shares: objects are
//! checked before anything is sent, and nothing is sent when any is bad.

use std::fmt;
use std::path::Path;

use edgecache_base::check::check_scheme_and_host;
pub use edgecache_base::check::{MAX_TAG_BYTES, check_url};

/// What objects are. Each [`Target`](super::Target) says which kinds it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    /// Full URLs (`https://www.example.com/app.css`).
    Url,
    /// Every URL that starts with this one (`https://www.example.com/static/`).
    Prefix,
    /// Cache tags (`Edge-Cache-Tag`, `Cache-Tag`, `Surrogate-Key`).
    Tag,
    /// Every URL of a host name (`www.example.com`): Cloudflare's purge by
    /// hostname.
    Host,
    /// Akamai CP codes (numbers).
    CpCode,
    /// Alibaba Cloud refresh patterns (`https://www.example.com/*.jpg`).
    Regex,
    /// Everything a target holds ([`Objects::everything`]): never the
    /// default, and only where asked for explicitly.
    Everything,
}

impl ObjectKind {
    /// The kind as the CLI and the reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Url => "url",
            ObjectKind::Prefix => "prefix",
            ObjectKind::Tag => "tag",
            ObjectKind::Host => "host",
            ObjectKind::CpCode => "cpcode",
            ObjectKind::Regex => "regex",
            ObjectKind::Everything => "everything",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Objects of one kind, to purge everywhere a [`Purger`](super::Purger) reaches.
///
/// ```
/// use edgecache_purge::{ObjectKind, Objects};
///
/// let objects = Objects::urls(["https://www.example.com/app.css"]);
/// assert_eq!(objects.kind(), ObjectKind::Url);
/// assert_eq!(Objects::tags(["product-42"]).len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objects {
    kind: ObjectKind,
    items: Vec<String>,
}

impl Objects {
    /// Objects of `kind`.
    pub fn new<S: Into<String>>(kind: ObjectKind, items: impl IntoIterator<Item = S>) -> Self {
        Self {
            kind,
            items: items.into_iter().map(Into::into).collect(),
        }
    }

    /// URLs.
    pub fn urls<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Self {
        Self::new(ObjectKind::Url, urls)
    }

    /// URL prefixes.
    pub fn prefixes<S: Into<String>>(prefixes: impl IntoIterator<Item = S>) -> Self {
        Self::new(ObjectKind::Prefix, prefixes)
    }

    /// Host names.
    pub fn hosts<S: Into<String>>(hosts: impl IntoIterator<Item = S>) -> Self {
        Self::new(ObjectKind::Host, hosts)
    }

    /// Cache tags.
    pub fn tags<S: Into<String>>(tags: impl IntoIterator<Item = S>) -> Self {
        Self::new(ObjectKind::Tag, tags)
    }

    /// Everything each target holds: one object, `everything`. Targets
    /// that can't purge everything skip it and say why.
    pub fn everything() -> Self {
        Self::new(ObjectKind::Everything, [EVERYTHING])
    }

    /// What the objects are.
    pub fn kind(&self) -> ObjectKind {
        self.kind
    }

    /// The objects, as given.
    pub fn items(&self) -> &[String] {
        &self.items
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The one object of [`ObjectKind::Everything`].
pub const EVERYTHING: &str = "everything";

/// Checks one object of `kind` by the rules every target shares, and
/// returns it as targets must send it (URLs percent-encoded where needed,
/// host lower-cased), or the reason it can't be sent.
///
/// ```
/// use edgecache_purge::{ObjectKind, check_object};
///
/// assert_eq!(check_object(ObjectKind::Url, "https://Example.com/a b")?, "https://example.com/a%20b");
/// assert_eq!(check_object(ObjectKind::Tag, "two words").unwrap_err(), "tags have no spaces or control characters");
/// assert!(check_object(ObjectKind::CpCode, "12ab").is_err());
/// assert_eq!(check_object(ObjectKind::Host, "WWW.Example.com")?, "www.example.com");
/// assert!(check_object(ObjectKind::Host, "https://www.example.com/").is_err());
/// # Ok::<(), String>(())
/// ```
pub fn check_object(kind: ObjectKind, object: &str) -> Result<String, String> {
    match kind {
        ObjectKind::Url | ObjectKind::Prefix => check_url(object).map(String::from),
        // A pattern is no URL: only its scheme and host are checked.
        ObjectKind::Regex => check_scheme_and_host(object).map(|()| object.to_owned()),
        ObjectKind::CpCode => object
            .parse::<u64>()
            .map(|code| code.to_string())
            .map_err(|_| "not a CP code (a number)".to_owned()),
        ObjectKind::Tag => edgecache_base::check::check_tag(object).map(|()| object.to_owned()),
        ObjectKind::Host => check_host(object),
        ObjectKind::Everything if object == EVERYTHING => Ok(object.to_owned()),
        ObjectKind::Everything => Err(format!("purging everything takes no objects (only {EVERYTHING:?})")),
    }
}

/// A host name as CDNs take it: no scheme, port or path; lower-cased, and an
/// internationalized name in its ASCII (punycode) form.
fn check_host(object: &str) -> Result<String, String> {
    if object.contains("://") || object.contains(['/', '?', '#', ':', '@']) {
        return Err("a host name alone, without scheme, port or path (www.example.com)".into());
    }
    match url::Host::parse(object) {
        Ok(url::Host::Domain(domain)) if domain.contains('.') => Ok(domain),
        Ok(url::Host::Domain(_)) => Err("not a full host name (www.example.com)".into()),
        Ok(_) => Err("an IP address, not a host name".into()),
        Err(error) => Err(format!("not a host name: {error}")),
    }
}

/// An object that cannot be sent as given; nothing is sent when any is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InvalidObject {
    /// Its position in the list, from 0.
    pub index: usize,
    /// The object as given.
    pub object: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Checks every object with `check`: each one's result with its index when
/// all pass; otherwise what is wrong with each that failed (and `nothing`
/// for an empty list), so a run sends all or nothing.
pub(crate) fn check_each<T>(
    objects: &[String],
    nothing: &str,
    mut check: impl FnMut(&str) -> Result<T, String>,
) -> Result<Vec<(usize, T)>, Vec<InvalidObject>> {
    if objects.is_empty() {
        return Err(vec![InvalidObject {
            index: 0,
            object: String::new(),
            reason: nothing.to_owned(),
        }]);
    }
    let mut passed = Vec::with_capacity(objects.len());
    let mut invalid = Vec::new();
    for (index, object) in objects.iter().enumerate() {
        match check(object) {
            Ok(value) => passed.push((index, value)),
            Err(reason) => invalid.push(InvalidObject {
                index,
                object: object.clone(),
                reason,
            }),
        }
    }
    if invalid.is_empty() { Ok(passed) } else { Err(invalid) }
}

/// An object to purge, and where it came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcedObject {
    /// The object, trimmed.
    pub text: String,
    /// `file:line`, `-:line` for standard input, or `argument N`.
    pub origin: String,
}

/// Reads objects one per line from files (`-` for standard input), skipping
/// blank lines and `#` comments, after the objects given directly.
pub fn read_objects(arguments: &[String], files: &[impl AsRef<Path>]) -> std::io::Result<Vec<SourcedObject>> {
    let mut objects: Vec<SourcedObject> = arguments
        .iter()
        .enumerate()
        .map(|(index, text)| SourcedObject {
            text: text.trim().to_owned(),
            origin: format!("argument {}", index + 1),
        })
        .collect();
    for file in files {
        let file = file.as_ref();
        let text = if file == Path::new("-") {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(file)
                .map_err(|error| std::io::Error::new(error.kind(), format!("{}: {error}", file.display())))?
        };
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                objects.push(SourcedObject {
                    text: line.to_owned(),
                    origin: format!("{}:{}", file.display(), index + 1),
                });
            }
        }
    }
    Ok(objects)
}
