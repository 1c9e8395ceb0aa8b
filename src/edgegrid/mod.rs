//! Akamai EdgeGrid: credentials, the EG1-HMAC-SHA256 signer, and
//! [`EdgeGridAuth`], a reqwest middleware that signs OPEN API calls.
//!
//! ```no_run
//! use edgecache::edgegrid::{Credentials, EdgeGridAuth};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = EdgeGridAuth::new(Credentials::load(None, None)?);
//! let host = auth.host().to_owned();
//! // EdgeGridAuth follows redirects itself, re-signing each hop: turn reqwest's off.
//! let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
//! let client = reqwest_middleware::ClientBuilder::new(client).with(auth).build();
//! let response = client.get(format!("https://{host}/ccu/v3/...")).send().await?;
//! # Ok(()) }
//! ```

mod edgerc;
mod sign;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Extensions, Method, StatusCode};
use reqwest_middleware::{Middleware, Next};

pub use self::edgerc::{Credentials, CredentialsError, DEFAULT_MAX_BODY};
pub use self::sign::Signer;

/// Redirects followed (and re-signed) before giving up.
const MAX_REDIRECTS: usize = 10;

/// Signs every request to the credentials' host; requests to any other host
/// pass untouched, so one client can call elsewhere too.
///
/// Adds `accountSwitchKey` when the credentials carry an account key.
/// Follows redirects on the credentials' host itself, with a fresh signature
/// for each new URL (build the reqwest client with
/// `redirect::Policy::none()`, or reqwest follows them first, unsigned); a
/// redirect to another host is returned as is, never signed.
/// A `401` that blames the timestamp becomes an error saying the clock may
/// be off, with the server's `Date`.
#[derive(Debug, Clone)]
pub struct EdgeGridAuth {
    signer: Arc<Signer>,
}

impl EdgeGridAuth {
    /// A middleware signing with these credentials.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            signer: Arc::new(Signer::new(credentials)),
        }
    }

    /// The host it signs for.
    pub fn host(&self) -> &str {
        self.signer.credentials().host()
    }

    fn signs(&self, url: &url::Url) -> bool {
        url[url::Position::BeforeHost..url::Position::AfterPort].eq_ignore_ascii_case(self.host())
    }

    fn sign(&self, request: &mut reqwest::Request) -> reqwest_middleware::Result<()> {
        if let Some(account_key) = &self.signer.credentials().account_key
            && !request.url().query_pairs().any(|(name, _)| name == "accountSwitchKey")
        {
            request
                .url_mut()
                .query_pairs_mut()
                .append_pair("accountSwitchKey", account_key);
        }
        let body = match request.body() {
            None => &[][..],
            Some(body) => body
                .as_bytes()
                .ok_or_else(|| reqwest_middleware::Error::middleware(EdgeGridError::StreamingBody))?,
        };
        let authorization = self
            .signer
            .authorization(request.method(), request.url(), request.headers(), body);
        let value = http::HeaderValue::try_from(authorization)
            .map_err(|_| reqwest_middleware::Error::middleware(EdgeGridError::InvalidToken))?;
        request.headers_mut().insert(http::header::AUTHORIZATION, value);
        Ok(())
    }
}

/// Why a request could not be signed or was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeGridError {
    /// The body is a stream: it cannot be hashed before it is sent.
    #[error("EdgeGrid signs the request body, so it must be in memory, not a stream")]
    StreamingBody,
    /// A token holds characters a header cannot.
    #[error("EdgeGrid credentials hold characters that cannot go in an Authorization header")]
    InvalidToken,
    /// Akamai refused the signature because of its timestamp.
    #[error(
        "Akamai refused the request signature (401: {detail}); the clock may be off: local time {local}, server time {server}"
    )]
    ClockSkew {
        /// The problem detail Akamai sent.
        detail: String,
        /// This machine's time when the response arrived.
        local: String,
        /// The response's `Date`.
        server: String,
    },
}

#[async_trait]
impl Middleware for EdgeGridAuth {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if !self.signs(request.url()) {
            return next.run(request, extensions).await;
        }
        for _ in 0..=MAX_REDIRECTS {
            self.sign(&mut request)?;
            let retry = request.try_clone();
            let response = next.clone().run(request, extensions).await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED {
                return clock_skew(response).await;
            }
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|value| value.to_str().ok());
            let target = location.and_then(|location| response.url().join(location).ok());
            let (Some(target), Some(mut follow)) = (target.filter(|_| status.is_redirection()), retry) else {
                return Ok(response);
            };
            if !self.signs(&target) {
                return Ok(response); // never sign for another host
            }
            if matches!(
                status,
                StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::SEE_OTHER
            ) && follow.method() != Method::HEAD
            {
                *follow.method_mut() = Method::GET;
                *follow.body_mut() = None;
                follow.headers_mut().remove(http::header::CONTENT_TYPE);
                follow.headers_mut().remove(http::header::CONTENT_LENGTH);
            }
            *follow.url_mut() = target;
            request = follow;
        }
        Err(reqwest_middleware::Error::middleware(std::io::Error::other(format!(
            "more than {MAX_REDIRECTS} redirects"
        ))))
    }
}

/// A 401 that blames the timestamp becomes [`EdgeGridError::ClockSkew`];
/// any other 401 is returned as it is.
async fn clock_skew(response: reqwest::Response) -> reqwest_middleware::Result<reqwest::Response> {
    let server = response
        .headers()
        .get(http::header::DATE)
        .and_then(|date| date.to_str().ok())
        .unwrap_or("unknown")
        .to_owned();
    let local = httpdate::fmt_http_date(std::time::SystemTime::now());
    let url = response.url().clone();
    let (parts, body) = http::Response::from(response).into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .map_err(reqwest_middleware::Error::Reqwest)?
        .to_bytes();
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|problem| {
            problem
                .get("detail")
                .and_then(|detail| detail.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    if detail.to_ascii_lowercase().contains("timestamp") {
        return Err(reqwest_middleware::Error::middleware(EdgeGridError::ClockSkew {
            detail,
            local,
            server,
        }));
    }
    Ok(edgecache_base::response::into_reqwest(
        http::Response::from_parts(parts, reqwest::Body::from(body)),
        &url,
    ))
}
