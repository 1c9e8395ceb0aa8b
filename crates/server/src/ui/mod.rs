//! The dashboard at `/ui`: what an operator looks at.
//!
//! Four pages, each an HTML shell that needs no token (it holds no data)
//! and one fragment behind the API's tokens: the resources (`/ui`), one
//! resource's versions (`/ui/resources/{id}`), the purges run through the
//! server (`/ui/purges`) and the server (`/ui/server`). The shell's script asks for a token once, keeps it in
//! `sessionStorage`, and loads the fragment with it in the `Authorization`
//! header; a token sees only its groups here as in the API. Fragments are
//! rendered on the server with `maud`, which escapes every value, and
//! every button calls the public API (`PUT`, `POST` or `DELETE`, with the
//! token header), so a link can never change anything.
//!
//! Everything is embedded in the binary: no build step, nothing fetched
//! from elsewhere, so it works offline. Every answer under `/ui` carries a
//! `Content-Security-Policy` allowing only this server's own script and
//! style (no inline script, no framing), `X-Content-Type-Options: nosniff`
//! and `Referrer-Policy: no-referrer`.

mod purges;
mod resource;
mod resources;
mod server_page;
mod shell;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::api::AppState;

/// The page shells and their script and style: no token needed.
pub(super) fn pages() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ui", get(shell::resources))
        .route("/ui/", get(shell::resources))
        .route("/ui/resources/{rid}", get(shell::resource))
        .route("/ui/purges", get(shell::purges))
        .route("/ui/server", get(shell::server))
        .route(
            "/ui/app.js",
            get(|| asset("text/javascript", include_str!("assets/app.js"))),
        )
        .route("/ui/app.css", get(|| asset("text/css", include_str!("assets/app.css"))))
        .layer(axum::middleware::from_fn(secure))
}

/// The fragments the shells load: behind the API's authentication.
pub(super) fn parts() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ui/part/resources", get(resources::part))
        .route("/ui/part/resources/{rid}", get(resource::part))
        .route("/ui/part/purges", get(purges::part))
        .route("/ui/part/server", get(server_page::part))
        .layer(axum::middleware::from_fn(secure))
}

async fn asset(content_type: &'static str, text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response()
}

/// Only this server's own script and style run; no inline script, no
/// plugin, no framing, no form posting elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

async fn secure(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// A fragment: HTML, never cached (it depends on the token).
fn fragment(markup: maud::Markup) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// A time as the pages show it: UTC, to the second.
fn when(time: Option<jiff::Timestamp>) -> String {
    match time {
        Some(time) => time.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => "—".to_owned(),
    }
}

/// A byte count with a binary unit: `512 B`, `1.5 KiB`, `3.2 GiB`.
fn bytes(count: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }
}
