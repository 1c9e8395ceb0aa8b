//! The API description served at `/openapi.json`, built from the model's
//! schemas and one table of routes.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, SchemaFormat};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, ObjectBuilder, OpenApi, OpenApiBuilder, PathItem, PathsBuilder,
    Ref, RefOr, Required, ResponseBuilder, Schema, Type,
};
use utoipa::{IntoParams, PartialSchema};

use edgecache_versions::{
    Change, ErrorBody, ErrorDetail, Limits, Pin, Registration, Resource, Selection, Strategy, Version, VersionStatus,
};

/// What a route answers on success.
enum Answer {
    /// A JSON value of this schema.
    Json(&'static str),
    /// `{items: [schema], total}`.
    Page(&'static str),
    /// A version's body, of the origin's media type.
    Body,
    /// Prometheus text.
    Metrics,
    /// `{"status":"ok"}`.
    Health,
    /// No body.
    Empty,
}

/// A query parameter's type.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Tag,
    Count,
    Flag,
    Status,
    Time,
}

struct Route {
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    /// The JSON body's schema, if the route takes one.
    request: Option<&'static str>,
    /// Success statuses (the first is the usual one) and what they carry.
    answers: &'static [(&'static str, Answer)],
    query: &'static [(&'static str, Kind, &'static str)],
    /// Whether the route takes a selection (see [`Selection`]).
    selects: bool,
    /// Whether the route needs no token.
    open: bool,
}

const PAGING: [(&str, Kind, &str); 2] = [
    ("skip", Kind::Count, "How many to skip"),
    ("limit", Kind::Count, "How many to answer (1 to 1000; default 100)"),
];

/// A route that takes no body, no parameters but its path's, and a token.
const fn route(
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    answers: &'static [(&'static str, Answer)],
) -> Route {
    Route {
        method,
        path,
        summary,
        request: None,
        answers,
        query: &[],
        selects: false,
        open: false,
    }
}

const ROUTES: &[Route] = &[
    Route {
        request: Some("Registration"),
        ..route(
            HttpMethod::Put,
            "/v1/resources",
            "Register a resource (idempotent); 201 if new, 200 with the existing one if not",
            &[("201", Answer::Json("Resource")), ("200", Answer::Json("Resource"))],
        )
    },
    Route {
        query: &[
            ("group", Kind::Tag, "Only this group's resources"),
            (
                "cache_tag",
                Kind::Tag,
                "Only resources with a version whose origin response carried this cache tag",
            ),
            ("search", Kind::Text, "Only resources whose URL contains this text"),
            (
                "strategy",
                Kind::Text,
                "Only resources with this kind of strategy: never, age, cron, remote_changed or on_request",
            ),
            (
                "status",
                Kind::Status,
                "Only resources whose newest version has this status",
            ),
            (
                "failing",
                Kind::Flag,
                "Only resources whose last fetch failed (true) or didn't (false)",
            ),
            PAGING[0],
            PAGING[1],
        ],
        ..route(
            HttpMethod::Get,
            "/v1/resources",
            "List resources",
            &[("200", Answer::Page("Resource"))],
        )
    },
    route(
        HttpMethod::Get,
        "/v1/resources/{rid}",
        "One resource",
        &[("200", Answer::Json("Resource"))],
    ),
    Route {
        request: Some("Change"),
        ..route(
            HttpMethod::Patch,
            "/v1/resources/{rid}",
            "Change strategy and limits; reschedules",
            &[("200", Answer::Json("Resource"))],
        )
    },
    Route {
        query: &[("force", Kind::Flag, "Delete even if a version is pinned")],
        ..route(
            HttpMethod::Delete,
            "/v1/resources/{rid}",
            "Delete a resource and its versions; 409 if one is pinned, unless force=true",
            &[("204", Answer::Empty)],
        )
    },
    route(
        HttpMethod::Post,
        "/v1/resources/{rid}/fetch",
        "Fetch now; 202 with the pending version. Concurrent calls share one fetch",
        &[("202", Answer::Json("Version"))],
    ),
    Route {
        selects: true,
        ..route(
            HttpMethod::Get,
            "/v1/resources/{rid}/content",
            "Select a version and stream its body, with X-Edgecache-Version, and X-Edgecache-Version-Metadata (base64url JSON of the version) if the request carries that header; 202 with Retry-After if `wait` ran out",
            &[("200", Answer::Body)],
        )
    },
    Route {
        query: &[
            ("status", Kind::Status, "Only versions in this state"),
            ("tag", Kind::Tag, "Only versions with this tag"),
            ("pinned", Kind::Flag, "Only pinned (true) or unpinned (false) versions"),
            PAGING[0],
            PAGING[1],
        ],
        ..route(
            HttpMethod::Get,
            "/v1/resources/{rid}/versions",
            "List versions, newest first",
            &[("200", Answer::Page("Version"))],
        )
    },
    Route {
        selects: true,
        ..route(
            HttpMethod::Get,
            "/v1/resources/{rid}/versions/select",
            "The selected version's metadata",
            &[("200", Answer::Json("Version"))],
        )
    },
    route(
        HttpMethod::Get,
        "/v1/resources/{rid}/versions/{vid}",
        "One version; `latest` is the newest ready one",
        &[("200", Answer::Json("Version"))],
    ),
    route(
        HttpMethod::Get,
        "/v1/resources/{rid}/versions/{vid}/content",
        "Stream a ready version's body (ETag is its sha256; Range and If-None-Match honoured)",
        &[("200", Answer::Body), ("206", Answer::Body), ("304", Answer::Empty)],
    ),
    Route {
        request: Some("Pin"),
        ..route(
            HttpMethod::Put,
            "/v1/resources/{rid}/versions/{vid}/pin",
            "Pin, for duration_seconds if given; 409 beyond max_pinned",
            &[("200", Answer::Json("Version"))],
        )
    },
    route(
        HttpMethod::Delete,
        "/v1/resources/{rid}/versions/{vid}/pin",
        "Unpin",
        &[("200", Answer::Json("Version"))],
    ),
    route(
        HttpMethod::Put,
        "/v1/resources/{rid}/versions/{vid}/tags/{tag}",
        "Tag",
        &[("200", Answer::Json("Version"))],
    ),
    route(
        HttpMethod::Delete,
        "/v1/resources/{rid}/versions/{vid}/tags/{tag}",
        "Untag",
        &[("200", Answer::Json("Version"))],
    ),
    Route {
        open: true,
        ..route(
            HttpMethod::Get,
            "/healthz",
            "Health: whether this replica reaches its index and its blobs; needs no token",
            &[("200", Answer::Health), ("503", Answer::Health)],
        )
    },
    Route {
        request: Some("PurgeRequest"),
        ..route(
            HttpMethod::Post,
            "/v1/purges",
            "Queue a purge at the server's purge targets (a token granted `purge`); 202 with its id. Purges run one at a time across replicas",
            &[("202", Answer::Json("PurgeQueued"))],
        )
    },
    Route {
        query: &[
            ("object", Kind::Text, "Only purges of this object"),
            ("target", Kind::Text, "Only purges with a line at this target"),
            (
                "outcome",
                Kind::Text,
                "Only purges with a line of this status (done, accepted, failed, skipped, not_sent)",
            ),
            ("since", Kind::Time, "Only purges created at or after"),
            ("until", Kind::Time, "Only purges created before"),
            PAGING[0],
            PAGING[1],
        ],
        ..route(
            HttpMethod::Get,
            "/v1/purges",
            "The purge history, newest first: who, why, what, and per target and object the outcome",
            &[("200", Answer::Page("Purge"))],
        )
    },
    route(
        HttpMethod::Get,
        "/v1/purges/{id}",
        "One purge, with its whole report (and verification, where asked for) once finished",
        &[("200", Answer::Json("Purge"))],
    ),
    route(
        HttpMethod::Get,
        "/metrics",
        "Prometheus metrics",
        &[("200", Answer::Metrics)],
    ),
];

const TAG_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";

/// One part of `/healthz`: `ok`, or `failing` with the error.
fn check() -> ObjectBuilder {
    ObjectBuilder::new()
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["ok", "failing"])),
        )
        .property("error", ObjectBuilder::new().schema_type(Type::String))
        .required("status")
}

fn schema_of(kind: Kind) -> RefOr<Schema> {
    match kind {
        Kind::Text => ObjectBuilder::new().schema_type(Type::String).into(),
        Kind::Tag => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(TAG_PATTERN))
            .into(),
        Kind::Count => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(Some(usize::MAX))
            .into(),
        Kind::Flag => ObjectBuilder::new().schema_type(Type::Boolean).into(),
        Kind::Status => Ref::from_schema_name("VersionStatus").into(),
        Kind::Time => ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into(),
    }
}

/// The selection's query parameters, described by [`Selection`]'s fields,
/// typed as the server reads them.
fn selection_parameters() -> impl Iterator<Item = Parameter> {
    Selection::into_params(|| Some(ParameterIn::Query))
        .into_iter()
        .map(|mut parameter| {
            let kind = match parameter.name.as_str() {
                "force_tag" | "prefer_tag" => Kind::Tag,
                "force_pinned" | "prefer_pinned" | "fresh" => Kind::Flag,
                "wait" => Kind::Count,
                "at" => Kind::Time,
                _ => Kind::Text,
            };
            parameter.schema = Some(schema_of(kind));
            parameter
        })
}

fn parameter(name: &str, place: ParameterIn, kind: Kind, description: Option<&str>) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(place.clone())
        .required(if matches!(place, ParameterIn::Path) {
            Required::True
        } else {
            Required::False
        })
        .description(description)
        .schema(Some(schema_of(kind)))
        .build()
}

fn answer(summary: &str, answer: &Answer) -> utoipa::openapi::Response {
    let json = |schema: RefOr<Schema>| ContentBuilder::new().schema(Some(schema)).build();
    let response = ResponseBuilder::new().description(summary);
    match answer {
        Answer::Json(schema) => response.content("application/json", json(Ref::from_schema_name(*schema).into())),
        Answer::Page(schema) => response.content(
            "application/json",
            json(
                ObjectBuilder::new()
                    .property("items", ArrayBuilder::new().items(Ref::from_schema_name(*schema)))
                    .required("items")
                    .property("total", schema_of(Kind::Count))
                    .required("total")
                    .into(),
            ),
        ),
        // The origin's bytes, of the origin's media type: no schema.
        Answer::Body => response.content("*/*", ContentBuilder::new().build()),
        Answer::Metrics => response.content(
            "text/plain",
            ContentBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build(),
        ),
        Answer::Health => response.content(
            "application/json",
            json(
                ObjectBuilder::new()
                    .property(
                        "status",
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .enum_values(Some(["ok", "failing"])),
                    )
                    .property("index", check())
                    .property("blobs", check())
                    .required("status")
                    .into(),
            ),
        ),
        Answer::Empty => response,
    }
    .build()
}

/// One route's operation: its answers, parameters, body and security.
fn operation(route: &Route) -> utoipa::openapi::path::Operation {
    let mut operation = OperationBuilder::new().summary(Some(route.summary));
    for (status, success) in route.answers {
        operation = operation.response(*status, answer(route.summary, success));
    }
    operation = operation.response(
        "default",
        ResponseBuilder::new()
            .description("An error: {\"error\":{\"code\",\"message\",\"field\"?}}")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            ),
    );
    for (name, kind) in [
        ("rid", Kind::Text),
        ("vid", Kind::Text),
        ("tag", Kind::Tag),
        ("id", Kind::Text),
    ] {
        if route.path.contains(&format!("{{{name}}}")) {
            operation = operation.parameter(parameter(name, ParameterIn::Path, kind, None));
        }
    }
    for (name, kind, description) in route.query {
        operation = operation.parameter(parameter(name, ParameterIn::Query, *kind, Some(description)));
    }
    if route.selects {
        for parameter in selection_parameters() {
            operation = operation.parameter(parameter);
        }
    }
    if let Some(schema) = route.request {
        operation = operation.request_body(Some(
            RequestBodyBuilder::new()
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(schema)))
                        .build(),
                )
                .required(Some(if schema == "Registration" {
                    Required::True
                } else {
                    Required::False
                }))
                .build(),
        ));
    }
    if route.open {
        operation = operation.securities(Some(Vec::<SecurityRequirement>::new()));
    }
    operation.build()
}

fn text() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn texts() -> utoipa::openapi::schema::ArrayBuilder {
    utoipa::openapi::schema::ArrayBuilder::new().items(text())
}

/// `POST /v1/purges`'s body.
fn purge_request() -> RefOr<Schema> {
    ObjectBuilder::new()
        .property(
            "kind",
            text().enum_values(Some(["url", "prefix", "tag", "host", "cpcode", "regex", "everything"])),
        )
        .property("objects", texts())
        .property(
            "targets",
            texts().description(Some("Only these purge targets, by name; all when absent")),
        )
        .property(
            "verify",
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .description(Some("Then check at each target that each URL is gone")),
        )
        .required("kind")
        .required("objects")
        .into()
}

fn purge_queued() -> RefOr<Schema> {
    ObjectBuilder::new()
        .property("id", text())
        .property("status", text())
        .property("url", text())
        .required("id")
        .into()
}

/// A purge in the history.
fn purge() -> RefOr<Schema> {
    let line = ObjectBuilder::new()
        .property("target", text())
        .property("object", text())
        .property("status", text())
        .property("detail", text())
        .property("id", text());
    ObjectBuilder::new()
        .property("id", text())
        .property("created_at", schema_of(Kind::Time))
        .property(
            "who",
            text().description(Some("The token's name (`tokens.txt:3`), or `server`")),
        )
        .property(
            "cause",
            ObjectBuilder::new().description(Some(
                "{\"kind\":\"request\"} or {\"kind\":\"change\",\"resource\",\"from_version\",\"to_version\"}",
            )),
        )
        .property("kind", text())
        .property("objects", texts())
        .property("targets", texts())
        .property(
            "status",
            text().enum_values(Some(["queued", "running", "done", "failed"])),
        )
        .property("finished_at", schema_of(Kind::Time))
        .property("lines", utoipa::openapi::schema::ArrayBuilder::new().items(line))
        .property(
            "report",
            ObjectBuilder::new().description(Some("The purge's report, once finished")),
        )
        .into()
}

/// The OpenAPI document.
pub(crate) fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for route in ROUTES {
        paths = paths.path(route.path, PathItem::new(route.method.clone(), operation(route)));
    }
    let mut components =
        ComponentsBuilder::new().security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    for (name, schema) in [
        ("Registration", Registration::schema()),
        ("Change", Change::schema()),
        ("Pin", Pin::schema()),
        ("Resource", Resource::schema()),
        ("Version", Version::schema()),
        ("VersionStatus", VersionStatus::schema()),
        ("Strategy", Strategy::schema()),
        ("Limits", Limits::schema()),
        ("Selection", Selection::schema()),
        ("ErrorBody", ErrorBody::schema()),
        ("ErrorDetail", ErrorDetail::schema()),
        ("PurgeRequest", purge_request()),
        ("PurgeQueued", purge_queued()),
        ("Purge", purge()),
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
