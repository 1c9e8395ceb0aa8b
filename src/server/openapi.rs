//! The API description served at `/openapi.json`, built from the model's
//! schemas and one table of routes.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, ObjectBuilder, OpenApi, OpenApiBuilder, PathItem, PathsBuilder,
    Ref, Required, ResponseBuilder, Type,
};
use utoipa::{IntoParams, PartialSchema};

use crate::versions::{ErrorBody, ErrorDetail, Limits, Resource, Selection, Strategy, Version, VersionStatus};

/// method, path, summary, request schema, success status, response schema
type Route = (
    HttpMethod,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
);

const ROUTES: &[Route] = &[
    (
        HttpMethod::Put,
        "/v1/resources",
        "Register a resource (idempotent); 201 if new, 200 if it existed",
        Some("Resource"),
        "201",
        Some("Resource"),
    ),
    (
        HttpMethod::Get,
        "/v1/resources",
        "List resources: {items, total}; ?group=&skip=&limit=",
        None,
        "200",
        None,
    ),
    (
        HttpMethod::Get,
        "/v1/resources/{rid}",
        "One resource",
        None,
        "200",
        Some("Resource"),
    ),
    (
        HttpMethod::Patch,
        "/v1/resources/{rid}",
        "Change strategy and limits; reschedules",
        None,
        "200",
        Some("Resource"),
    ),
    (
        HttpMethod::Delete,
        "/v1/resources/{rid}",
        "Delete a resource and its versions; 409 if pinned unless ?force=true",
        None,
        "204",
        None,
    ),
    (
        HttpMethod::Post,
        "/v1/resources/{rid}/fetch",
        "Fetch now; concurrent calls share one fetch",
        None,
        "202",
        Some("Version"),
    ),
    (
        HttpMethod::Get,
        "/v1/resources/{rid}/content",
        "Select a version and stream it (X-Edgecache-Version)",
        None,
        "200",
        None,
    ),
    (
        HttpMethod::Get,
        "/v1/resources/{rid}/versions",
        "List versions, newest first; ?status=&tag=&pinned=&skip=&limit=",
        None,
        "200",
        None,
    ),
    (
        HttpMethod::Get,
        "/v1/resources/{rid}/versions/select",
        "The selected version's metadata",
        None,
        "200",
        Some("Version"),
    ),
    (
        HttpMethod::Get,
        "/v1/resources/{rid}/versions/{vid}",
        "One version; `latest` is the newest ready one",
        None,
        "200",
        Some("Version"),
    ),
    (
        HttpMethod::Get,
        "/v1/resources/{rid}/versions/{vid}/content",
        "Stream a ready version (Range, If-None-Match)",
        None,
        "200",
        None,
    ),
    (
        HttpMethod::Put,
        "/v1/resources/{rid}/versions/{vid}/pin",
        "Pin, optionally for duration_seconds",
        None,
        "200",
        Some("Version"),
    ),
    (
        HttpMethod::Delete,
        "/v1/resources/{rid}/versions/{vid}/pin",
        "Unpin",
        None,
        "200",
        Some("Version"),
    ),
    (
        HttpMethod::Put,
        "/v1/resources/{rid}/versions/{vid}/tags/{tag}",
        "Tag",
        None,
        "200",
        Some("Version"),
    ),
    (
        HttpMethod::Delete,
        "/v1/resources/{rid}/versions/{vid}/tags/{tag}",
        "Untag",
        None,
        "200",
        Some("Version"),
    ),
    (
        HttpMethod::Get,
        "/healthz",
        "Health (no token needed)",
        None,
        "200",
        None,
    ),
    (HttpMethod::Get, "/metrics", "Prometheus metrics", None, "200", None),
];

fn json_content(schema: &str) -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(schema)))
        .build()
}

/// The OpenAPI document.
pub(crate) fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for (method, path, summary, request, status, response) in ROUTES {
        let (path, summary, request, status, response) = (*path, *summary, *request, *status, *response);
        let mut operation = OperationBuilder::new()
            .summary(Some(summary))
            .response(
                status,
                ResponseBuilder::new().description(summary).content(
                    "application/json",
                    response.map_or_else(|| ContentBuilder::new().build(), json_content),
                ),
            )
            .response(
                "default",
                ResponseBuilder::new()
                    .description("An error: {\"error\":{\"code\",\"message\",\"field\"?}}")
                    .content("application/json", json_content("ErrorBody")),
            );
        for name in ["rid", "vid", "tag"] {
            if path.contains(&format!("{{{name}}}")) {
                operation = operation.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
                );
            }
        }
        if path.ends_with("/content") && !path.contains("{vid}") || path.ends_with("/select") {
            for parameter in Selection::into_params(|| Some(ParameterIn::Query)) {
                operation = operation.parameter(parameter);
            }
        }
        if let Some(schema) = request {
            operation = operation.request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", json_content(schema))
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        paths = paths.path(path, PathItem::new(method.clone(), operation.build()));
    }
    let mut components =
        ComponentsBuilder::new().security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    for (name, schema) in [
        ("Resource", Resource::schema()),
        ("Version", Version::schema()),
        ("VersionStatus", VersionStatus::schema()),
        ("Strategy", Strategy::schema()),
        ("Limits", Limits::schema()),
        ("Selection", Selection::schema()),
        ("ErrorBody", ErrorBody::schema()),
        ("ErrorDetail", ErrorDetail::schema()),
    ] {
        components = components.schema(name, schema);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("edgecache versioned cache")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Several versions of each remote response, fetched on schedules, pinned and tagged.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .security(Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]))
        .build()
}
