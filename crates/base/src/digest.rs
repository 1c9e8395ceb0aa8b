//! Digests and randomness, in one place for every signer and store: hex,
//! HMAC-SHA256 and the random bytes secrets are made of.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The lower-case hex digits of `bytes`.
pub fn hex_lower(bytes: &[u8]) -> String {
    let mut text = vec![0; bytes.len() * 2];
    hex_lower_into(bytes, &mut text);
    String::from_utf8(text).unwrap_or_default()
}

/// Writes the lower-case hex digits of `bytes` into `out`, which is twice as long.
pub fn hex_lower_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// The SHA-256 of `bytes`, in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex_lower(&Sha256::digest(bytes))
}

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = hmac_sha256_keyed(key);
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// An HMAC-SHA256 ready for `update`s, under `key`.
pub fn hmac_sha256_keyed(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; the fallback is never reached.
    Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()))
}

/// 32 random bytes from the operating system: the secrets stores keep.
pub fn random_bytes() -> [u8; 32] {
    let mut bytes = [0; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back on what differs between processes and runs.
        let seed = format!(
            "{:?}{:?}{}",
            std::time::SystemTime::now(),
            std::thread::current().id(),
            std::process::id()
        );
        bytes = Sha256::digest(seed.as_bytes()).into();
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_hmac_match_published_vectors() {
        assert_eq!(hex_lower(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        // RFC 4231, test case 2.
        assert_eq!(
            hex_lower(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_ne!(random_bytes(), random_bytes());
    }
}
