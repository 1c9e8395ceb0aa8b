//! Keeps the server from becoming a proxy into its own network: origins on
//! loopback, private, link-local and other non-public addresses are
//! refused unless `--allow-private-origins` is given. The check runs on
//! every address a name resolves to (so DNS can't smuggle one in) and on
//! every redirect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is somewhere a shared fetcher must not reach by default.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_private_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(mapped) => is_private_v4(mapped),
            None => is_private_v6(ip),
        },
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // "This network", 0.0.0.0/8, and reserved 240.0.0.0/4.
        || a == 0
        || a >= 240
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local fc00::/7 and link-local fe80::/10.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

/// A fetch refused because its origin is a private address.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to fetch from {host}: it is a loopback, private or link-local address \
     (start the server with --allow-private-origins to allow it)"
)]
pub(crate) struct PrivateOrigin {
    host: String,
}

/// The error for a refused address, as text.
pub(crate) fn refusal(host: &str) -> String {
    PrivateOrigin { host: host.to_owned() }.to_string()
}

/// Whether `error`, or an error it wraps, is a refused private origin:
/// retrying won't change it.
pub(crate) fn is_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |error| error.source()).any(|error| error.is::<PrivateOrigin>())
}

/// Checks a URL's host when it is an IP literal (names are checked when
/// they resolve). Answers why it is refused.
pub(crate) fn check_literal(url: &url::Url) -> Result<(), PrivateOrigin> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    if is_private(ip) {
        return Err(PrivateOrigin { host: ip.to_string() });
    }
    Ok(())
}

/// The public addresses `host` resolves to, and whether it resolved to
/// anything at all.
async fn public_addresses(host: &str) -> std::io::Result<(Vec<SocketAddr>, bool)> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    let public = addrs.iter().copied().filter(|addr| !is_private(addr.ip())).collect();
    Ok((public, !addrs.is_empty()))
}

/// A resolver that drops private addresses and fails when none is left.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let (public, resolved) = public_addresses(name.as_str()).await?;
            if public.is_empty() && resolved {
                return Err(Box::new(PrivateOrigin {
                    host: name.as_str().to_owned(),
                }) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// Whether every address `host` resolves to is refused (`false` when it
/// doesn't resolve: the fetch will say so).
pub(crate) async fn resolves_only_privately(host: &str) -> bool {
    matches!(public_addresses(host).await, Ok((public, true)) if public.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_refused_and_public_ones_allowed() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "172.32.0.1",
            "100.128.0.1",
        ] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn literal_hosts_are_checked_names_are_left_to_resolution() {
        let url = |text: &str| url::Url::parse(text).unwrap();
        assert!(check_literal(&url("http://127.0.0.1:8080/")).is_err());
        assert!(check_literal(&url("http://[::1]/")).is_err());
        assert!(check_literal(&url("http://example.org/")).is_ok());
        assert!(check_literal(&url("http://8.8.8.8/")).is_ok());
    }
}
