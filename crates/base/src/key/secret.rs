//! The key's secret part: the HMAC secret, and the one keyed digest of a
//! request's credentials.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The secret that keys digests of credentials and `Vary` values, so the
/// store holds nothing a guess could be checked against.
#[derive(Clone)]
pub struct KeySecret(Hmac<Sha256>);

impl KeySecret {
    /// A secret from its bytes (any length).
    pub fn new(secret: &[u8]) -> Self {
        // HMAC takes keys of any length; the fallback is never used.
        Self(crate::digest::hmac_sha256_keyed(secret))
    }

    /// A fresh random secret, for stores that keep none.
    pub fn random() -> Self {
        Self::new(&crate::digest::random_bytes())
    }

    /// A fresh HMAC keyed with this secret.
    pub fn mac(&self) -> Hmac<Sha256> {
        self.0.clone()
    }
}

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeySecret(..)")
    }
}

/// Collects a request's credentials into one keyed digest.
pub struct Credentials<'s> {
    secret: &'s KeySecret,
    /// Query and form pairs, sorted before digesting so their order doesn't matter.
    pairs: Vec<(u8, Vec<u8>, Vec<u8>)>,
}

impl<'s> Credentials<'s> {
    pub fn new(secret: &'s KeySecret) -> Self {
        Self {
            secret,
            pairs: Vec::new(),
        }
    }

    pub fn add(&mut self, kind: u8, name: &[u8], value: &[u8]) {
        self.pairs.push((kind, name.to_vec(), value.to_vec()));
    }

    /// The digest, or `None` when the request carries no credential.
    pub fn finish(mut self) -> Option<[u8; 32]> {
        if self.pairs.is_empty() {
            return None;
        }
        self.pairs.sort();
        let mut mac = self.secret.mac();
        mac.update(b"credentials");
        for (kind, name, value) in &self.pairs {
            mac.update(&[*kind]);
            length_prefixed_mac(&mut mac, name);
            length_prefixed_mac(&mut mac, value);
        }
        Some(mac.finalize().into_bytes().into())
    }
}

pub fn length_prefixed_mac(mac: &mut Hmac<Sha256>, bytes: &[u8]) {
    mac.update(&(bytes.len() as u64).to_le_bytes());
    mac.update(bytes);
}

pub fn truncate(digest: [u8; 32]) -> [u8; 16] {
    let mut short = [0; 16];
    short.copy_from_slice(&digest[..16]);
    // 128 bits: collision-free for any realistic cache, half the text.
    short
}
