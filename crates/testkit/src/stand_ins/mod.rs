//! Stand-ins for the CDN vendors' purge APIs, each enforcing its vendor's
//! documented rules (quoted where each is enforced).

pub mod akamai;
pub mod alibaba;
pub mod cloudflare;
pub mod edge;
pub mod fastly;
