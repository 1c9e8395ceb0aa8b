//! The whole application: the API and the dashboard behind
//! authentication, `/healthz` and the dashboard's pages without, each
//! answer counted and traced.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::{self, ApiError, AppState, Shared};
use super::auth::Grant;
use super::ui;

/// Every route, with its layers.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let protected = api::routes()
        .merge(ui::parts())
        .fallback(|| async { ApiError::not_found("route") })
        .layer(tower_http::limit::RequestBodyLimitLayer::new(1 << 20))
        .merge(api::purge_route())
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate));
    api::health()
        .merge(ui::pages())
        .merge(protected)
        .layer(axum::middleware::from_fn(count_request))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Counts answers by route template, method and status: a bounded set of
/// labels whatever the callers send.
async fn count_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = match *request.method() {
        http::Method::GET => "GET",
        http::Method::PUT => "PUT",
        http::Method::POST => "POST",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        _ => "other",
    };
    let response = next.run(request).await;
    metrics::counter!(
        "edgecache_server_requests_total",
        "route" => route,
        "method" => method,
        "status" => response.status().as_str().to_owned(),
    )
    .increment(1);
    response
}

async fn authenticate(State(state): Shared, mut request: Request, next: Next) -> Response {
    let grant = if state.tokens.is_empty() {
        Grant::loopback()
    } else {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                // The scheme is case-insensitive (RFC 9110 §11.1).
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .map(str::trim);
        match presented.and_then(|token| state.tokens.check(token)) {
            Some(grant) => grant,
            None => {
                let message = if presented.is_some() {
                    "the bearer token is not valid"
                } else {
                    "this server needs `Authorization: Bearer <token>`"
                };
                return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
            }
        }
    };
    request.extensions_mut().insert(grant.groups.clone());
    request.extensions_mut().insert(grant);
    next.run(request).await
}
