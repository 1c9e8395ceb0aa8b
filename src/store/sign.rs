//! Signed entries: an HMAC-SHA256 tag over each encoded entry, so entries
//! changed or planted behind the cache's back are refused.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of the tag appended to a signed entry.
pub(crate) const TAG_LEN: usize = 32;

/// Signs with the current key; verifies with it or any older one (rotation).
#[derive(Clone)]
pub(crate) struct EntrySigner {
    /// Keyed MAC states, current key first; cloned per use so keying happens once.
    keys: Vec<Hmac<Sha256>>,
    salt: Vec<u8>,
}

impl fmt::Debug for EntrySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys or the salt.
        f.debug_struct("EntrySigner")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl EntrySigner {
    /// `secret` signs new entries; `older` keys still verify old ones.
    pub(crate) fn new(secret: &[u8], older: &[Vec<u8>], salt: &[u8]) -> Self {
        let keys = std::iter::once(secret)
            .chain(older.iter().map(Vec::as_slice))
            .map(edgecache_base::digest::hmac_sha256_keyed)
            .collect();
        Self {
            keys,
            salt: salt.to_vec(),
        }
    }

    /// The tag for `payload`, under the current key.
    pub(crate) fn tag(&self, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut tag = [0; TAG_LEN];
        if let Some(key) = self.keys.first() {
            tag.copy_from_slice(&self.mac(key, payload).finalize().into_bytes());
        }
        tag
    }

    /// Whether `tag` is `payload`'s tag under any key, compared in constant time.
    pub(crate) fn verify(&self, payload: &[u8], tag: &[u8]) -> bool {
        self.keys
            .iter()
            .any(|key| self.mac(key, payload).verify_slice(tag).is_ok())
    }

    fn mac(&self, key: &Hmac<Sha256>, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = key.clone();
        mac.update(&self.salt);
        mac.update(payload);
        mac
    }
}
