//! EG1-HMAC-SHA256: the EdgeGrid request signature.

use std::borrow::Cow;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use edgecache_base::digest::hmac_sha256;
use http::{HeaderMap, Method};
use sha2::{Digest, Sha256};
use url::Url;

use super::Credentials;

/// Computes `Authorization` headers for EdgeGrid requests.
///
/// ```
/// use edgecache::edgegrid::{Credentials, Signer};
///
/// let credentials = Credentials::new("akab-x.luna.akamaiapis.net", "akab-client", "secret=", "akab-access")?;
/// let signer = Signer::new(credentials);
/// let url = url::Url::parse("https://akab-x.luna.akamaiapis.net/ccu/v3/delete/url/production")?;
/// // Fixed timestamp and nonce give a reproducible signature; `authorization` uses now and a fresh nonce.
/// let header = signer.authorization_at(&http::Method::POST, &url, &http::HeaderMap::new(), b"{}",
///     "20140321T19:34:21+0000", "nonce-1");
/// assert!(header.starts_with("EG1-HMAC-SHA256 client_token=akab-client;access_token=akab-access;"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Signer {
    credentials: Credentials,
}

impl Signer {
    /// A signer for these credentials.
    pub fn new(credentials: Credentials) -> Self {
        Self { credentials }
    }

    /// The credentials it signs with.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The `Authorization` header for a request, timestamped now with a fresh nonce.
    pub fn authorization(&self, method: &Method, url: &Url, headers: &HeaderMap, body: &[u8]) -> String {
        let nonce = uuid::Uuid::new_v4().to_string();
        self.authorization_at(method, url, headers, body, &timestamp(SystemTime::now()), &nonce)
    }

    /// The `Authorization` header for a given timestamp and nonce.
    pub fn authorization_at(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        body: &[u8],
        timestamp: &str,
        nonce: &str,
    ) -> String {
        let credentials = &self.credentials;
        let auth_header = format!(
            "EG1-HMAC-SHA256 client_token={};access_token={};timestamp={timestamp};nonce={nonce};",
            credentials.client_token, credentials.access_token
        );
        let host = headers
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or(&url[url::Position::BeforeHost..url::Position::AfterPort]);
        let method = method.as_str().to_ascii_uppercase();
        // Only POST bodies are hashed, and only their first `max_body` bytes.
        let content_hash = if method == "POST" && !body.is_empty() {
            BASE64.encode(Sha256::digest(&body[..body.len().min(credentials.max_body)]))
        } else {
            String::new()
        };
        let data_to_sign = [
            method.as_str(),
            url.scheme(),
            host,
            &url[url::Position::BeforePath..url::Position::AfterQuery],
            &self.canonical_headers(headers),
            &content_hash,
            &auth_header,
        ]
        .join("\t");
        let signing_key = BASE64.encode(hmac_sha256(credentials.client_secret.as_bytes(), timestamp.as_bytes()));
        let signature = BASE64.encode(hmac_sha256(signing_key.as_bytes(), data_to_sign.as_bytes()));
        format!("{auth_header}signature={signature}")
    }

    /// `name:value` for each header to sign that is present, in the
    /// configured order; values trimmed, runs of whitespace made one space.
    /// Non-ASCII values are signed as UTF-8, as the reference client does;
    /// bytes that aren't UTF-8 are read as Latin-1, HTTP's old charset.
    fn canonical_headers(&self, headers: &HeaderMap) -> String {
        let mut canonical = Vec::new();
        for name in &self.credentials.headers_to_sign {
            let Some(value) = headers.get(name.as_str()) else {
                continue;
            };
            let value: Cow<'_, str> = match std::str::from_utf8(value.as_bytes()) {
                Ok(text) => Cow::Borrowed(text),
                Err(_) => Cow::Owned(value.as_bytes().iter().map(|&byte| char::from(byte)).collect()),
            };
            canonical.push(format!(
                "{name}:{}",
                value.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
        canonical.join("\t")
    }
}

/// `yyyyMMddTHH:mm:ss+0000` in UTC, as EdgeGrid wants it.
pub(crate) fn timestamp(time: SystemTime) -> String {
    let utc = edgecache_base::clock::Utc::from(time);
    format!(
        "{:04}{:02}{:02}T{:02}:{:02}:{:02}+0000",
        utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second
    )
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn timestamps_are_utc_in_edgegrid_form() {
        assert_eq!(timestamp(UNIX_EPOCH), "19700101T00:00:00+0000");
        let known = UNIX_EPOCH + std::time::Duration::from_secs(1_395_430_461);
        assert_eq!(timestamp(known), "20140321T19:34:21+0000");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap), "20000229T00:00:00+0000");
    }

    #[test]
    fn the_published_check_values_hold() {
        let signing_key = BASE64.encode(hmac_sha256(
            b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx=",
            b"20140321T19:34:21+0000",
        ));
        assert_eq!(signing_key, "znsRMDBRqTXGJ7Ojip3/h2FGPu3LuoMYWgv9PKEnE/o=");
        assert_eq!(
            BASE64.encode(Sha256::digest(b"test_body")),
            "REPGqEEubBHzJMhwqDZtbt515/ntEvAMNriNR53zcdY="
        );
    }
}
