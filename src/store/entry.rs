//! A stored response and its on-store encoding.
//!
//! The encoding is ours and versioned: a 4-byte magic, a format version, a
//! flags byte, the length of the metadata, the metadata (serde, `postcard`),
//! the body as raw bytes, and, for signed entries, an HMAC-SHA256 tag over
//! all that precedes it. The metadata holds the entry's own key and method,
//! so a signature also ties the entry to the request it was stored for.
//! Decoding validates every length and never executes anything, so a
//! tampered store yields an error, never code or a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use super::sign::{EntrySigner, TAG_LEN};

const MAGIC: &[u8; 4] = b"edgc";
/// Version 2 added the key and the initial age; older entries are misses.
const FORMAT_VERSION: u8 = 2;
const HEADER_LEN: usize = MAGIC.len() + 1 + 1 + 4;
/// Flag: the entry ends with a signature tag.
const SIGNED: u8 = 1;

/// A response as the cache keeps it.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The response body.
    pub body: Bytes,
    /// The key it was stored under: an entry found under another key is
    /// not served.
    pub key: String,
    /// The normalized request URL, with credential and ignored parameters removed.
    pub url: String,
    /// The request method.
    pub method: http::Method,
    /// When the response was stored (or last revalidated).
    pub created_at: SystemTime,
    /// When it stops being fresh; `None` means never.
    pub expires: Option<SystemTime>,
    /// How old the response already was when stored (RFC 9111 §4.2.3).
    pub initial_age: Duration,
    /// Request headers named by the response's `Vary`, lower-cased.
    pub(crate) vary_names: Vec<String>,
    /// Digest of the request's values for `vary_names`.
    pub(crate) vary_digest: [u8; 16],
    /// Cache tags, for deleting by tag.
    pub tags: Vec<String>,
}

impl StoredResponse {
    /// Whether the entry is past its expiry at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|expires| expires <= now)
    }

    /// Its current age (RFC 9111 §4.2.3): the age it arrived with plus the
    /// time it has been stored.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age
            .saturating_add(now.duration_since(self.created_at).unwrap_or_default())
    }
}

/// Why stored bytes could not be decoded into an entry.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not start with the entry magic.
    #[error("not a cache entry (bad magic)")]
    BadMagic,
    /// Written by a format this version does not know.
    #[error("unsupported cache entry format version {0}")]
    UnsupportedVersion(u8),
    /// Shorter than its own lengths say.
    #[error("truncated cache entry")]
    Truncated,
    /// The metadata did not decode.
    #[error("corrupt cache entry metadata: {0}")]
    Metadata(#[from] postcard::Error),
    /// A header, status or method in the metadata is invalid.
    #[error("corrupt cache entry: invalid {0}")]
    Invalid(&'static str),
    /// Entries must be signed, and this one is not.
    #[error("unsigned cache entry (entries must be signed)")]
    Unsigned,
    /// The signature does not match the entry under any configured key.
    #[error("cache entry signature does not match (tampered, or signed with an unknown key)")]
    BadSignature,
}

#[derive(Serialize, Deserialize)]
struct Metadata<'a> {
    status: u16,
    #[serde(borrow)]
    key: &'a str,
    #[serde(borrow)]
    method: &'a str,
    #[serde(borrow)]
    url: &'a str,
    created_at_ms: u64,
    expires_at_ms: Option<u64>,
    initial_age_s: u64,
    #[serde(borrow)]
    headers: Vec<(&'a str, &'a [u8])>,
    vary_names: Vec<String>,
    vary_digest: [u8; 16],
    tags: Vec<String>,
}

/// The length of an encoded entry's metadata, read from its header; 0 for
/// bytes that are not an entry.
pub(crate) fn metadata_len(bytes: &[u8]) -> usize {
    match bytes.get(..HEADER_LEN) {
        Some(header) if &header[..4] == MAGIC => {
            u32::from_le_bytes([header[6], header[7], header[8], header[9]]) as usize
        }
        _ => 0,
    }
}

pub(crate) fn to_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

pub(crate) fn from_millis(millis: u64) -> SystemTime {
    // Stored bytes may say anything: past the clock's range is "far future".
    UNIX_EPOCH
        .checked_add(Duration::from_millis(millis))
        .unwrap_or(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 64))
}

impl StoredResponse {
    /// Encodes the entry for a store, signed when a signer is given.
    pub(crate) fn encode(&self, signer: Option<&EntrySigner>) -> Bytes {
        let metadata = Metadata {
            status: self.status.as_u16(),
            key: &self.key,
            method: self.method.as_str(),
            url: &self.url,
            created_at_ms: to_millis(self.created_at),
            expires_at_ms: self.expires.map(to_millis),
            initial_age_s: self.initial_age.as_secs(),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes()))
                .collect(),
            vary_names: self.vary_names.clone(),
            vary_digest: self.vary_digest,
            tags: self.tags.clone(),
        };
        // Serializing plain strings, integers and byte slices cannot fail.
        let metadata = postcard::to_stdvec(&metadata).unwrap_or_default();
        let mut out = BytesMut::with_capacity(HEADER_LEN + metadata.len() + self.body.len() + TAG_LEN);
        out.put_slice(MAGIC);
        out.put_u8(FORMAT_VERSION);
        out.put_u8(if signer.is_some() { SIGNED } else { 0 });
        out.put_u32_le(metadata.len() as u32);
        out.put_slice(&metadata);
        out.put_slice(&self.body);
        if let Some(signer) = signer {
            let tag = signer.tag(&out);
            out.put_slice(&tag);
        }
        out.freeze()
    }

    /// Decodes an entry, without checking any signature; the body shares
    /// `bytes`' buffer (no copy). Any input gives a value or an error, never
    /// a panic.
    pub fn decode(bytes: &Bytes) -> Result<Self, DecodeError> {
        Self::decode_with(bytes, None)
    }

    /// Decodes an entry; with a signer, only entries signed under one of its
    /// keys decode.
    pub(crate) fn decode_with(bytes: &Bytes, signer: Option<&EntrySigner>) -> Result<Self, DecodeError> {
        let header = bytes.get(..HEADER_LEN).ok_or(DecodeError::Truncated)?;
        if &header[..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if header[4] != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(header[4]));
        }
        let signed = header[5] & SIGNED != 0;
        let bytes = &if signed {
            let payload_len = bytes.len().checked_sub(TAG_LEN).ok_or(DecodeError::Truncated)?;
            if let Some(signer) = signer
                && !signer.verify(&bytes[..payload_len], &bytes[payload_len..])
            {
                return Err(DecodeError::BadSignature);
            }
            bytes.slice(..payload_len)
        } else if signer.is_some() {
            return Err(DecodeError::Unsigned);
        } else {
            bytes.clone()
        };
        let metadata_len = u32::from_le_bytes([header[6], header[7], header[8], header[9]]) as usize;
        let body_start = HEADER_LEN.checked_add(metadata_len).ok_or(DecodeError::Truncated)?;
        let metadata = bytes.get(HEADER_LEN..body_start).ok_or(DecodeError::Truncated)?;
        let metadata: Metadata<'_> = postcard::from_bytes(metadata)?;

        let mut headers = HeaderMap::with_capacity(metadata.headers.len());
        for (name, value) in metadata.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| DecodeError::Invalid("header name"))?;
            // Shares the entry's buffer instead of copying each value.
            let value = HeaderValue::from_maybe_shared(bytes.slice_ref(value))
                .map_err(|_| DecodeError::Invalid("header value"))?;
            headers.append(name, value);
        }
        Ok(StoredResponse {
            status: StatusCode::from_u16(metadata.status).map_err(|_| DecodeError::Invalid("status"))?,
            method: metadata.method.parse().map_err(|_| DecodeError::Invalid("method"))?,
            key: metadata.key.to_owned(),
            url: metadata.url.to_owned(),
            headers,
            body: bytes.slice(body_start..),
            created_at: from_millis(metadata.created_at_ms),
            expires: metadata.expires_at_ms.map(from_millis),
            initial_age: Duration::from_secs(metadata.initial_age_s),
            vary_names: metadata.vary_names,
            vary_digest: metadata.vary_digest,
            tags: metadata.tags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredResponse {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        StoredResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hello"),
            key: "0123abcd".into(),
            url: "http://example.com/".into(),
            method: http::Method::GET,
            created_at: from_millis(1_700_000_000_000),
            expires: Some(from_millis(1_700_000_060_000)),
            initial_age: Duration::from_secs(30),
            vary_names: vec!["accept".into()],
            vary_digest: [7; 16],
            tags: vec!["product-1".into()],
        }
    }

    #[test]
    fn round_trips() {
        let entry = sample();
        let decoded = StoredResponse::decode_with(&entry.encode(None), None).expect("decodes");
        assert_eq!(decoded.status, entry.status);
        assert_eq!(decoded.headers, entry.headers);
        assert_eq!(decoded.body, entry.body);
        assert_eq!(decoded.url, entry.url);
        assert_eq!(decoded.key, entry.key);
        assert_eq!(decoded.initial_age, entry.initial_age);
        assert_eq!(decoded.created_at, entry.created_at);
        assert_eq!(decoded.expires, entry.expires);
        assert_eq!(decoded.vary_names, entry.vary_names);
        assert_eq!(decoded.vary_digest, entry.vary_digest);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_or_a_value_never_a_panic() {
        let signer = EntrySigner::new(b"secret", &[], b"salt");
        let encoded = sample().encode(None);
        let signed = sample().encode(Some(&signer));
        for len in 0..encoded.len() {
            let _ = StoredResponse::decode_with(&encoded.slice(..len), None);
        }
        for index in 0..encoded.len() {
            for bit in 0..8 {
                let mut bytes = encoded.to_vec();
                bytes[index] ^= 1 << bit;
                let _ = StoredResponse::decode_with(&Bytes::from(bytes), None);
            }
        }
        // Signed: every flipped bit is caught (flipping the flag makes it unsigned).
        for index in 0..signed.len() {
            for bit in 0..8 {
                let mut bytes = signed.to_vec();
                bytes[index] ^= 1 << bit;
                let decoded = StoredResponse::decode_with(&Bytes::from(bytes), Some(&signer));
                assert!(decoded.is_err(), "byte {index} bit {bit}");
            }
        }
        assert!(StoredResponse::decode_with(&signed, Some(&signer)).is_ok());
        assert!(matches!(
            StoredResponse::decode_with(&encoded, Some(&signer)),
            Err(DecodeError::Unsigned)
        ));
        let other = EntrySigner::new(b"other", &[], b"salt");
        assert!(matches!(
            StoredResponse::decode_with(&signed, Some(&other)),
            Err(DecodeError::BadSignature)
        ));
        let other_salt = EntrySigner::new(b"secret", &[], b"pepper");
        assert!(matches!(
            StoredResponse::decode_with(&signed, Some(&other_salt)),
            Err(DecodeError::BadSignature)
        ));
        let rotated = EntrySigner::new(b"new", &[b"secret".to_vec()], b"salt");
        assert!(
            StoredResponse::decode_with(&signed, Some(&rotated)).is_ok(),
            "older keys still verify"
        );
        assert!(
            StoredResponse::decode_with(&signed, None).is_ok(),
            "without a signer the tag is ignored"
        );
        assert!(matches!(
            StoredResponse::decode_with(&Bytes::from_static(b"edgc"), None),
            Err(DecodeError::Truncated)
        ));
        let junk = Bytes::from_static(b"junkjunkjunk");
        assert!(matches!(
            StoredResponse::decode_with(&junk, None),
            Err(DecodeError::BadMagic)
        ));
    }
}
