//! The checks every layer shares: what a URL to fetch or purge must be,
//! and what a cache tag must be. The versioned server checks what it
//! registers and records with them; the purge targets check what they send.

/// The longest tag any target takes: Cloudflare bounds only the whole
/// `Cache-Tag` header, at 16 KB. Each target narrows it in its own
/// `check` (`edgecache_purge::Target::check`) (Akamai 128 characters, Fastly 1,024 bytes).
pub const MAX_TAG_BYTES: usize = 16 * 1024;

/// Checks a cache tag by the rules every layer shares: not empty, no
/// whitespace or control characters, at most [`MAX_TAG_BYTES`]. Targets
/// narrow it with their vendors' rules.
pub fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("empty tag".into());
    }
    if tag.len() > MAX_TAG_BYTES {
        return Err(format!("longer than {MAX_TAG_BYTES} bytes, more than any CDN takes"));
    }
    if tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("tags have no spaces or control characters".into());
    }
    Ok(())
}

/// Checks a URL to purge or prefetch, the same way for every CDN: an
/// absolute `http`/`https` URL with a host, no control characters, every
/// `%` starting a `%XX` escape, and no `#fragment` (it never reaches a CDN).
/// The URL comes back as the CDN must see it: spaces and non-ASCII
/// characters percent-encoded, host lower-cased. The reason is one short
/// phrase.
///
/// ```
/// use edgecache_base::check::check_url;
///
/// assert_eq!(check_url("https://Example.com/a b")?.as_str(), "https://example.com/a%20b");
/// assert_eq!(check_url("https:///nohost").unwrap_err(), "has no host");
/// assert!(check_url("https://example.com/100%").is_err());
/// # Ok::<(), String>(())
/// ```
pub fn check_url(line: &str) -> Result<url::Url, String> {
    check_scheme_and_host(line)?;
    if line.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    let bytes = line.as_bytes();
    for (at, _) in line.match_indices('%') {
        let escape = bytes.get(at + 1..at + 3);
        if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            return Err("has a `%` that starts no %XX escape (write %25 for a literal %)".into());
        }
    }
    let url = url::Url::parse(line).map_err(|error| format!("not a URL: {error}"))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if url.fragment().is_some() {
        return Err("has a #fragment, which never reaches the CDN".into());
    }
    Ok(url)
}

/// The part of [`check_url`] that applies to patterns too.
pub fn check_scheme_and_host(line: &str) -> Result<(), String> {
    let Some((scheme, rest)) = line.split_once("://") else {
        return Err("must start with http:// or https://".into());
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("must start with http:// or https://".into());
    }
    // Checked on the text: the URL parser would take `https:///path`'s
    // first path segment as the host.
    if rest.split(['/', '?', '#']).next().unwrap_or_default().is_empty() {
        return Err("has no host".into());
    }
    Ok(())
}
