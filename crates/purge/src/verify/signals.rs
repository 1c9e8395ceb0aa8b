//! What an edge's response says about the copy it served: each vendor's
//! cache-status header, the edge that answered, and the copy's time from
//! `Age`, `Date` or Alibaba Cloud's save time. Every value comes from the
//! network, so nothing here panics on any header and all time arithmetic is
//! checked.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use super::{Seen, Verdict};

/// The CDN whose edge is asked: which debug headers go with the request,
/// and which response headers are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Vendor {
    /// Akamai: `Pragma: akamai-x-cache-on, …`, answered with `X-Cache`.
    Akamai,
    /// Cloudflare: `CF-Cache-Status`, and `CF-Ray`'s data centre.
    Cloudflare,
    /// Fastly: `X-Cache`, `X-Cache-Hits`, `X-Served-By` (`Fastly-Debug: 1` asks for more).
    Fastly,
    /// Alibaba Cloud CDN: `X-Cache`, `Via`, `Ali-Swift-Global-Savetime`.
    Alibaba,
    /// Any other cache: `Age` and `Date` alone.
    Generic,
}

impl Vendor {
    /// The request headers that make the vendor's edge say what it did.
    pub(crate) fn debug_headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // techdocs.akamai.com/edge-diagnostics/docs/pragma-headers:
            // "akamai-x-cache-on | X-Cache | Returns information about how
            // the edge server response was served"; the cache key and the
            // request id name the object and the request for a support case.
            Vendor::Akamai => &[(
                "pragma",
                "akamai-x-cache-on, akamai-x-get-cache-key, akamai-x-get-request-id",
            )],
            // fastly.com/documentation/reference/http/http-headers/Fastly-Debug:
            // "If an inbound request has the Fastly-Debug header set
            // (conventionally to 1 …) … output additional response headers".
            Vendor::Fastly => &[("fastly-debug", "1")],
            Vendor::Cloudflare | Vendor::Alibaba | Vendor::Generic => &[],
        }
    }
}

/// How the edge says it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// It asked the origin for this answer (a miss, an expired copy
    /// refetched, a stale copy revalidated).
    Origin,
    /// It served a stored copy without asking the origin.
    Hit,
    /// It served a stored copy it knows is stale.
    Stale,
    /// It does not cache this URL (a pass, a bypass, dynamic content).
    NotCached,
}

/// Everything the response says, before judging it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Signals {
    /// The lookup, and the header that said so (`X-Cache: TCP_MISS`).
    pub lookup: Option<(Lookup, String)>,
    /// The edge that answered, as the vendor names it.
    pub edge: Option<String>,
    /// When the edge stored its copy, by the vendor's own clock (Alibaba
    /// Cloud's `Ali-Swift-Global-Savetime`).
    pub saved_at: Option<SystemTime>,
    /// `Age`, in seconds.
    pub age: Option<u64>,
    /// `Date`.
    pub date: Option<SystemTime>,
}

/// A header's value as text, trimmed; `None` when absent or not visible ASCII.
fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// A short, printable copy of a header for a report (a hostile edge can send anything).
fn quoted(name: &str, value: &str) -> String {
    let value: String = value.chars().filter(|c| !c.is_control()).take(80).collect();
    format!("{name}: {value}")
}

/// Reads what `vendor`'s edge says in `headers`.
pub(crate) fn read(vendor: Vendor, headers: &HeaderMap) -> Signals {
    let mut signals = Signals {
        // RFC 9111 §5.1: Age is a non-negative integer; anything else is ignored.
        age: text(headers, "age").and_then(|age| age.parse().ok()),
        date: text(headers, "date").and_then(|date| httpdate::parse_http_date(date).ok()),
        ..Signals::default()
    };
    match vendor {
        Vendor::Akamai => {
            if let Some(value) = text(headers, "x-cache") {
                signals.lookup = tcp_code(value).map(|lookup| (lookup, quoted("X-Cache", value)));
                // "TCP_MISS from a23-45-67-89.deploy.akamaitechnologies.com (AkamaiGHost/…) (-)"
                signals.edge = value
                    .split_once(" from ")
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .map(clean);
            }
        }
        Vendor::Cloudflare => {
            if let Some(value) = text(headers, "cf-cache-status") {
                signals.lookup = cloudflare_status(value).map(|lookup| (lookup, quoted("CF-Cache-Status", value)));
            }
            // "CF-Ray: 8a1b2c3d4e5f6789-LHR": the data centre that answered.
            signals.edge = text(headers, "cf-ray")
                .and_then(|ray| ray.rsplit_once('-'))
                .map(|(_, colo)| format!("colo {}", clean(colo)));
        }
        Vendor::Fastly => {
            if let Some(value) = text(headers, "x-cache") {
                signals.lookup = fastly_cache(value).map(|lookup| (lookup, quoted("X-Cache", value)));
            }
            // "X-Served-By: cache-jfk1041-JFK, cache-ord1720-ORD": every node
            // that handled it (more than one with shielding).
            signals.edge = text(headers, "x-served-by").map(clean);
        }
        Vendor::Alibaba => {
            if let Some(value) = text(headers, "x-cache") {
                // "HIT TCP_MEM_HIT dirn:-2:-2", "MISS TCP_MISS dirn:-2:-2":
                // the squid-style code says more than the first word.
                let lookup = tcp_code(value).or_else(|| match value.split_whitespace().next() {
                    Some(word) if word.eq_ignore_ascii_case("miss") => Some(Lookup::Origin),
                    Some(word) if word.eq_ignore_ascii_case("hit") => Some(Lookup::Hit),
                    _ => None,
                });
                signals.lookup = lookup.map(|lookup| (lookup, quoted("X-Cache", value)));
            }
            // "Via: cache45.l2cn1832[38,304-0,M], …, kunlun19.cn3157[57,0]":
            // the last node is the one nearest the client.
            signals.edge = text(headers, "via").and_then(last_via_node);
            signals.saved_at = text(headers, "ali-swift-global-savetime")
                .and_then(|seconds| seconds.parse::<u64>().ok())
                .and_then(|seconds| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(seconds)));
        }
        Vendor::Generic => {}
    }
    signals
}

/// The last node of a `Via` list, without its bracketed figures (which hold commas too).
fn last_via_node(via: &str) -> Option<String> {
    let mut depth = 0usize;
    let outside: String = via
        .chars()
        .filter(|c| match c {
            '[' => {
                depth = depth.saturating_add(1);
                false
            }
            ']' => {
                depth = depth.saturating_sub(1);
                false
            }
            _ => depth == 0,
        })
        .collect();
    outside.rsplit(',').next().map(clean).filter(|node| !node.is_empty())
}

/// An edge's name, printable and short.
fn clean(name: &str) -> String {
    name.trim().chars().filter(|c| !c.is_control()).take(120).collect()
}

/// A squid-style result code anywhere in `value` (Akamai's and Alibaba
/// Cloud's `X-Cache`), as Akamai's Pragma-headers page defines them.
fn tcp_code(value: &str) -> Option<Lookup> {
    let code = value
        .split_whitespace()
        .find(|word| word.len() > 4 && word.get(..4).is_some_and(|head| head.eq_ignore_ascii_case("tcp_")))?
        .to_ascii_uppercase();
    Some(match code.as_str() {
        // "TCP_MISS: The object was not in cache and a server fetched it from
        // an origin server." "TCP_REFRESH_HIT: The object was stale in cache
        // and was successfully refreshed with the object from an origin
        // server"; "TCP_REFRESH_MISS: … refresh obtained a new object from an
        // origin server".
        "TCP_MISS" | "TCP_REFRESH_HIT" | "TCP_REFRESH_MISS" => Lookup::Origin,
        // "TCP_REFRESH_FAIL_HIT: The object was stale in cache and an origin
        // server couldn't be reached to refresh it, so the stale object was served."
        "TCP_REFRESH_FAIL_HIT" => Lookup::Stale,
        // TCP_HIT, TCP_MEM_HIT, TCP_IMS_HIT, TCP_NEGATIVE_HIT: served from cache.
        code if code.ends_with("_HIT") => Lookup::Hit,
        code if code.ends_with("_MISS") => Lookup::Origin,
        _ => return None,
    })
}

/// `CF-Cache-Status`, as developers.cloudflare.com/cache/concepts/cache-responses
/// defines its values.
fn cloudflare_status(value: &str) -> Option<Lookup> {
    Some(match value.to_ascii_uppercase().as_str() {
        // "MISS: … served from the origin web server"; "EXPIRED: … found in
        // cache but … fetched from the origin"; "REVALIDATED: … revalidated
        // with the origin".
        "MISS" | "EXPIRED" | "REVALIDATED" => Lookup::Origin,
        "HIT" => Lookup::Hit,
        // "STALE" and "UPDATING": a stale copy served.
        "STALE" | "UPDATING" => Lookup::Stale,
        // "BYPASS", "DYNAMIC", "NONE/UNKNOWN": not served from cache.
        "BYPASS" | "DYNAMIC" | "NONE" | "UNKNOWN" | "NONE/UNKNOWN" => Lookup::NotCached,
        _ => return None,
    })
}

/// Fastly's `X-Cache`: one word per node. fastly.com/documentation/reference/http/http-headers/X-Cache:
/// "any entries in this header except "MISS" indicate that the request was
/// satisfied from cache and not forwarded to origin"; stale hits "report as HIT".
fn fastly_cache(value: &str) -> Option<Lookup> {
    let mut words = value
        .split(',')
        .map(str::trim)
        .filter(|word| !word.is_empty())
        .peekable();
    words.peek()?;
    let mut all_miss = true;
    for word in words {
        if word.eq_ignore_ascii_case("miss") {
            continue;
        }
        if word.eq_ignore_ascii_case("hit") || word.to_ascii_uppercase().starts_with("HIT") {
            all_miss = false;
        } else {
            return None;
        }
    }
    Some(if all_miss { Lookup::Origin } else { Lookup::Hit })
}

/// How far apart two clocks (ours, and the edge's or origin's) may be
/// before a copy's absolute time is trusted against the purge.
const CLOCK_SLACK: Duration = Duration::from_secs(2);

/// When the copy was stored, as a range `[earliest, latest]` by our clock,
/// and what said so: `Age` (relative, so no clock can be wrong), else the
/// vendor's save time (by its clock, so with slack).
fn copy_born(signals: &Signals, received: SystemTime) -> Option<(SystemTime, SystemTime, &'static str)> {
    if let Some(age) = signals.age {
        // Age counts whole seconds (RFC 9111 §5.1): the copy is at least
        // `age` and less than `age + 1` seconds old.
        let latest = received
            .checked_sub(Duration::from_secs(age))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let earliest = latest
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        return Some((earliest, latest, "Age"));
    }
    let saved = signals.saved_at?;
    Some((
        saved.checked_sub(CLOCK_SLACK).unwrap_or(SystemTime::UNIX_EPOCH),
        saved.checked_add(CLOCK_SLACK + Duration::from_secs(1))?,
        "Ali-Swift-Global-Savetime",
    ))
}

/// Seconds from `earlier` to `later`, zero if it is not later.
fn seconds_between(earlier: SystemTime, later: SystemTime) -> u64 {
    later.duration_since(earlier).map_or(0, |gap| gap.as_secs())
}

/// The verdict on one response received at `received`, for a purge
/// accepted at `since`.
pub(crate) fn judge(signals: &Signals, since: SystemTime, received: SystemTime) -> Verdict {
    let verdict = |seen, detail: String| Verdict {
        seen,
        detail,
        edge: signals.edge.clone(),
        age_seconds: signals.age,
    };
    let said = signals.lookup.as_ref().map(|(_, header)| header.as_str());
    match signals.lookup.as_ref().map(|(lookup, _)| *lookup) {
        Some(Lookup::Origin) => {
            return verdict(
                Seen::Evicted,
                format!("the edge asked the origin ({})", said.unwrap_or_default()),
            );
        }
        Some(Lookup::NotCached) => {
            return verdict(
                Seen::Evicted,
                format!("the edge does not cache it ({})", said.unwrap_or_default()),
            );
        }
        Some(Lookup::Hit | Lookup::Stale) | None => {}
    }
    let stale = matches!(signals.lookup, Some((Lookup::Stale, _)));
    let Some((earliest, latest, by)) = copy_born(signals, received) else {
        // `Date` alone is when the origin made the response, or the edge's
        // own clock if it rewrites it: it can show a copy older than the
        // purge, never one younger.
        let (Some(said), Some(date)) = (said, signals.date) else {
            return verdict(
                Seen::Unknown,
                match said {
                    Some(said) => format!("a cached copy ({said}) with no Age or Date to date it"),
                    None => "no cache signal: neither the vendor's cache header nor Age came back".to_owned(),
                },
            );
        };
        let latest = date.checked_add(CLOCK_SLACK + Duration::from_secs(1));
        return match latest {
            Some(latest) if latest < since => verdict(
                Seen::StillCached,
                format!(
                    "{} made {} s before the purge ({said}; by Date)",
                    if stale { "a stale copy" } else { "a copy" },
                    seconds_between(date, since)
                ),
            ),
            _ => verdict(
                Seen::Unknown,
                format!("a cached copy ({said}) dated by Date alone, which is not before the purge"),
            ),
        };
    };
    if earliest >= since {
        verdict(
            Seen::Evicted,
            format!(
                "the copy served was stored {} s after the purge (by {by})",
                seconds_between(since, earliest)
            ),
        )
    } else if latest < since {
        let kind = if stale { "a stale copy" } else { "a copy" };
        verdict(
            Seen::StillCached,
            format!(
                "{kind} stored {} s before the purge ({}{by})",
                seconds_between(latest, since),
                said.map(|said| format!("{said}; by "))
                    .unwrap_or_else(|| "by ".to_owned())
            ),
        )
    } else {
        verdict(
            Seen::Unknown,
            format!("the copy was stored within seconds of the purge; {by} can't tell which came first"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    http::HeaderValue::from_str(value).expect("value"),
                )
            })
            .collect()
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    const PURGE: u64 = 1_700_000_000;

    fn seen(vendor: Vendor, pairs: &[(&str, &str)], received: u64) -> Verdict {
        judge(&read(vendor, &headers(pairs)), at(PURGE), at(received))
    }

    #[test]
    fn each_vendor_reads_its_own_words() {
        // The samples are the vendors' own, from the pages cited above.
        let miss = seen(
            Vendor::Akamai,
            &[(
                "x-cache",
                "TCP_MISS from a23-45-67-89.deploy.akamaitechnologies.com (AkamaiGHost/10.1) (-)",
            )],
            PURGE + 5,
        );
        assert_eq!(miss.seen, Seen::Evicted);
        assert_eq!(miss.edge.as_deref(), Some("a23-45-67-89.deploy.akamaitechnologies.com"));
        let hit = seen(
            Vendor::Akamai,
            &[
                (
                    "x-cache",
                    "TCP_MEM_HIT from a1.deploy.akamaitechnologies.com (AkamaiGHost/10.1) (-)",
                ),
                ("age", "300"),
            ],
            PURGE + 5,
        );
        assert_eq!(hit.seen, Seen::StillCached, "{hit:?}");
        assert_eq!(hit.age_seconds, Some(300));

        let cloudflare = seen(
            Vendor::Cloudflare,
            &[
                ("cf-cache-status", "HIT"),
                ("age", "2"),
                ("cf-ray", "8a1b2c3d4e5f6789-LHR"),
            ],
            PURGE + 10,
        );
        assert_eq!(
            cloudflare.seen,
            Seen::Evicted,
            "stored 8 s after the purge: {cloudflare:?}"
        );
        assert_eq!(cloudflare.edge.as_deref(), Some("colo LHR"));
        assert_eq!(
            seen(Vendor::Cloudflare, &[("cf-cache-status", "EXPIRED")], PURGE).seen,
            Seen::Evicted
        );
        assert_eq!(
            seen(
                Vendor::Cloudflare,
                &[("cf-cache-status", "UPDATING"), ("age", "900")],
                PURGE + 1
            )
            .seen,
            Seen::StillCached
        );

        // Shielding: the shield's HIT means the origin was not asked.
        let fastly = seen(
            Vendor::Fastly,
            &[
                ("x-cache", "MISS, HIT"),
                ("age", "142"),
                ("x-served-by", "cache-jfk1041-JFK, cache-ord1720-ORD"),
            ],
            PURGE + 3,
        );
        assert_eq!(fastly.seen, Seen::StillCached);
        assert_eq!(fastly.edge.as_deref(), Some("cache-jfk1041-JFK, cache-ord1720-ORD"));
        assert_eq!(
            seen(Vendor::Fastly, &[("x-cache", "MISS, MISS")], PURGE).seen,
            Seen::Evicted
        );

        let alibaba = seen(
            Vendor::Alibaba,
            &[
                ("x-cache", "HIT TCP_MEM_HIT dirn:-2:-2"),
                ("ali-swift-global-savetime", &(PURGE - 600).to_string()),
                ("via", "cache45.l2cn1832[38,304-0,M], kunlun19.cn3157[57,0]"),
            ],
            PURGE + 1,
        );
        assert_eq!(alibaba.seen, Seen::StillCached, "{alibaba:?}");
        assert_eq!(alibaba.edge.as_deref(), Some("kunlun19.cn3157"));
        assert_eq!(
            seen(
                Vendor::Alibaba,
                &[("x-cache", "HIT TCP_REFRESH_HIT dirn:11:927701954")],
                PURGE
            )
            .seen,
            Seen::Evicted,
            "a refresh asked the origin"
        );
    }

    #[test]
    fn a_copy_too_close_to_the_purge_is_not_claimed_either_way() {
        let close = seen(Vendor::Cloudflare, &[("cf-cache-status", "HIT"), ("age", "0")], PURGE);
        assert_eq!(close.seen, Seen::Unknown, "{close:?}");
        let silent = seen(Vendor::Fastly, &[], PURGE + 60);
        assert_eq!(silent.seen, Seen::Unknown);
        let undated = seen(Vendor::Cloudflare, &[("cf-cache-status", "HIT")], PURGE + 60);
        assert_eq!(undated.seen, Seen::Unknown);
    }

    proptest! {
        /// Any header values, any times: a verdict, never a panic; and an
        /// edge that says it asked the origin is always read as evicted.
        #[test]
        fn any_response_gets_a_verdict(
            vendor in prop::sample::select(vec![Vendor::Akamai, Vendor::Cloudflare, Vendor::Fastly, Vendor::Alibaba, Vendor::Generic]),
            values in prop::collection::vec(("(x-cache|cf-cache-status|age|date|via|cf-ray|x-served-by|ali-swift-global-savetime)", "[ -~]{0,40}"), 0..6),
            since in any::<u64>(),
            received in any::<u64>(),
        ) {
            let mut map = HeaderMap::new();
            for (name, value) in &values {
                if let Ok(value) = http::HeaderValue::from_str(value) {
                    map.append(http::HeaderName::from_bytes(name.as_bytes()).expect("name"), value);
                }
            }
            let since = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(since / 2)).unwrap_or(SystemTime::UNIX_EPOCH);
            let received = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(received / 2)).unwrap_or(SystemTime::UNIX_EPOCH);
            let signals = read(vendor, &map);
            let verdict = judge(&signals, since, received);
            if matches!(signals.lookup, Some((Lookup::Origin, _))) {
                prop_assert_eq!(verdict.seen, Seen::Evicted);
            }
            prop_assert!(verdict.detail.len() < 400);
        }

        /// With `Age` alone, a copy older than the purge by more than a
        /// second is still cached, and one younger by more than a second is
        /// evicted.
        #[test]
        fn age_dates_the_copy(age in 0u64..1_000_000, gap in 2u64..1_000_000, after in any::<bool>()) {
            let received = at(PURGE + 2_000_000);
            let since = if after {
                // The copy was stored `gap` s after the purge.
                at(PURGE + 2_000_000 - age - gap)
            } else {
                at(PURGE + 2_000_000 - age + gap)
            };
            let signals = read(Vendor::Cloudflare, &headers(&[("cf-cache-status", "HIT"), ("age", &age.to_string())]));
            let verdict = judge(&signals, since, received);
            prop_assert_eq!(verdict.seen, if after { Seen::Evicted } else { Seen::StillCached });
        }
    }
}
