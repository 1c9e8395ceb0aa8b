//! Responses the middlewares build themselves, as `reqwest::Response`s.

use http::Extensions;
use reqwest::ResponseBuilderExt;
use url::Url;

/// Converts to a `reqwest::Response` that reports the request's URL (not
/// reqwest's placeholder for responses built from `http` types).
pub fn into_reqwest(response: http::Response<reqwest::Body>, url: &Url) -> reqwest::Response {
    let (mut parts, body) = response.into_parts();
    let mut extensions = url_extension(url);
    extensions.extend(parts.extensions);
    parts.extensions = extensions;
    reqwest::Response::from(http::Response::from_parts(parts, body))
}

/// Extensions holding `url` as reqwest's response URL, whose type is private.
pub fn url_extension(url: &Url) -> Extensions {
    let mut carrier = http::Response::builder().url(url.clone()).body(()).unwrap_or_default();
    std::mem::take(carrier.extensions_mut())
}
