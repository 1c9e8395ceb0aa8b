//! Akamai's own rules, read from its docs: which cache tags it takes, and
//! how long a refused request must wait.

/// The longest cache tag Akamai takes, in characters.
pub const MAX_TAG_CHARS: usize = 128;

/// Akamai's rule for a cache tag: at most 128 characters, each a letter, a
/// digit or one of ``!#$%'+./^_`|~-``. Akamai refuses a whole request (of
/// up to 5,000 tags) for one bad tag, with a `400` that retrying won't
/// change, so the reason names the character and where it stands.
///
/// ```
/// use edgecache_purge::akamai::check_tag;
///
/// assert!(check_tag("product-42").is_ok());
/// assert_eq!(
///     check_tag("product:42").unwrap_err(),
///     "`:` (character 8) is not allowed in an Akamai cache tag: only letters, digits and !#$%'+./^_`|~-"
/// );
/// ```
pub fn check_tag(tag: &str) -> Result<(), String> {
    const ALLOWED: &str = "!#$%'+./^_`|~-";
    let length = tag.chars().count();
    if length > MAX_TAG_CHARS {
        return Err(format!(
            "an Akamai cache tag is at most {MAX_TAG_CHARS} characters; this one has {length}"
        ));
    }
    match tag
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_alphanumeric() && !ALLOWED.contains(*c))
    {
        Some((at, c)) => Err(format!(
            "`{c}` (character {}) is not allowed in an Akamai cache tag: only letters, digits and {ALLOWED}",
            at + 1
        )),
        None => Ok(()),
    }
}

/// How long Akamai's answer to a refused (`429`) request says to wait,
/// when it has no `Retry-After`: `X-RateLimit-Seconds-To-Refresh-Limit`
/// (and its `-Objects` form, fractional seconds allowed), or what the
/// bucket headers imply: the tokens missing from `X-RateLimit-Remaining`
/// (one request) and `X-RateLimit-Remaining-Objects` (`tokens` objects),
/// at `X-RateLimit-Limit-Per-Second` and its `-Objects` form. The longest
/// wins; values that are not finite, non-negative numbers count as absent.
pub(crate) fn rate_limit_wait(headers: &http::HeaderMap, tokens: u32) -> Option<std::time::Duration> {
    let number = |name: &str| {
        let value: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (value.is_finite() && value >= 0.0).then_some(value)
    };
    let refill = |remaining: &str, per_second: &str, wanted: f64| {
        let missing = wanted - number(remaining)?;
        let rate = number(per_second).filter(|rate| *rate > 0.0)?;
        (missing > 0.0).then(|| missing / rate)
    };
    [
        number("x-ratelimit-seconds-to-refresh-limit"),
        number("x-ratelimit-seconds-to-refresh-limit-objects"),
        refill("x-ratelimit-remaining", "x-ratelimit-limit-per-second", 1.0),
        refill(
            "x-ratelimit-remaining-objects",
            "x-ratelimit-limit-per-second-objects",
            f64::from(tokens),
        ),
    ]
    .into_iter()
    .flatten()
    .reduce(f64::max)
    .and_then(|seconds| std::time::Duration::try_from_secs_f64(seconds).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (http::HeaderName::from_static(name), value.parse().expect("value")))
            .collect()
    }

    #[test]
    fn the_wait_is_the_longest_akamai_names_and_fractions_count() {
        let wait = |pairs: &[(&'static str, &str)], tokens| rate_limit_wait(&headers(pairs), tokens);
        assert_eq!(
            wait(&[("x-ratelimit-seconds-to-refresh-limit", "0.25")], 1),
            Some(std::time::Duration::from_millis(250))
        );
        // Akamai's own example: no request token left at 50 a second.
        assert_eq!(
            wait(
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-limit-per-second", "50.00"),
                    ("x-ratelimit-remaining-objects", "9904"),
                    ("x-ratelimit-limit-per-second-objects", "200.00"),
                ],
                100
            ),
            Some(std::time::Duration::from_millis(20))
        );
        // 300 URLs wanted, 100 left, 200 a second: one second.
        assert_eq!(
            wait(
                &[
                    ("x-ratelimit-remaining-objects", "100"),
                    ("x-ratelimit-limit-per-second-objects", "200"),
                ],
                300
            ),
            Some(std::time::Duration::from_secs(1))
        );
        assert_eq!(wait(&[("x-ratelimit-seconds-to-refresh-limit", "NaN")], 1), None);
        assert_eq!(wait(&[("x-ratelimit-seconds-to-refresh-limit", "-3")], 1), None);
        assert_eq!(
            wait(
                &[("x-ratelimit-remaining", "0"), ("x-ratelimit-limit-per-second", "0")],
                1
            ),
            None
        );
        assert_eq!(wait(&[], 1), None);
    }

    proptest::proptest! {
        #[test]
        fn any_rate_header_value_gives_a_wait_or_none_never_a_panic(
            values in proptest::collection::vec("[ -~]{0,24}|[0-9.eE+-]{0,12}", 6),
            tokens: u32,
        ) {
            let names = [
                "x-ratelimit-seconds-to-refresh-limit",
                "x-ratelimit-seconds-to-refresh-limit-objects",
                "x-ratelimit-remaining",
                "x-ratelimit-limit-per-second",
                "x-ratelimit-remaining-objects",
                "x-ratelimit-limit-per-second-objects",
            ];
            let mut map = http::HeaderMap::new();
            for (name, value) in names.iter().zip(&values) {
                if let Ok(value) = http::HeaderValue::from_str(value) {
                    map.insert(*name, value);
                }
            }
            let _ = rate_limit_wait(&map, tokens);
        }

        #[test]
        fn a_tag_passes_exactly_when_akamai_would_take_it(tag in r"[ -~]{0,140}|[a-z0-9:@*<>{}\\é-]{1,20}") {
            let allowed = |c: char| c.is_ascii_alphanumeric() || "!#$%'+./^_`|~-".contains(c);
            let expected = tag.chars().count() <= MAX_TAG_CHARS && tag.chars().all(allowed);
            proptest::prop_assert_eq!(check_tag(&tag).is_ok(), expected);
        }
    }
}
