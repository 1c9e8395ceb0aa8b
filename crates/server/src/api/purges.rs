//! `POST /v1/purges`, `GET /v1/purges` and `GET /v1/purges/{id}`: purging
//! through the server, and the history of every purge.

use super::*;
use crate::auth::Grant;
use crate::index::{PurgeFilter, PurgeLine, PurgeRow};
use crate::purges::{PurgeRequest, Refused};

/// The largest `POST /v1/purges` body: about 400,000 URLs, where other
/// requests are held to 1 MiB.
pub(crate) const MAX_BODY: usize = 32 * 1024 * 1024;

/// One purge as the API shows it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct PurgeView {
    pub id: String,
    pub created_at: Timestamp,
    /// The token's name (`tokens.txt:3`), or `server` for a purge on change.
    pub who: String,
    pub cause: Value,
    pub kind: String,
    pub objects: Value,
    /// The targets asked for; `null` for all.
    pub targets: Value,
    /// `queued`, `running`, `done` or `failed`.
    pub status: String,
    pub finished_at: Option<Timestamp>,
    /// Per target and object, what became of it (as settled so far).
    pub lines: Vec<LineView>,
    /// The whole report (and the verification, where asked for), once finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
}

/// One object at one target.
#[derive(Debug, serde::Serialize)]
pub(crate) struct LineView {
    pub target: String,
    pub object: String,
    pub status: String,
    pub detail: String,
    pub id: Option<String>,
}

fn view(row: PurgeRow, lines: Vec<PurgeLine>, with_report: bool) -> PurgeView {
    let json = |text: &str| serde_json::from_str(text).unwrap_or(Value::Null);
    PurgeView {
        cause: json(&row.cause),
        objects: json(&row.objects),
        targets: json(&row.targets),
        report: if with_report {
            row.report.as_deref().map(json)
        } else {
            None
        },
        id: row.id,
        created_at: row.created_at,
        who: row.who,
        kind: row.kind,
        status: row.status,
        finished_at: row.finished_at,
        lines: lines
            .into_iter()
            .map(|line| LineView {
                target: line.target,
                object: line.object,
                status: line.status,
                detail: line.detail,
                id: line.carrier,
            })
            .collect(),
    }
}

pub(super) async fn create(
    State(state): Shared,
    Extension(grant): Extension<Grant>,
    JsonBody(request): JsonBody<PurgeRequest>,
) -> AppResult<Response> {
    if !grant.purge {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may not purge: its line in the token file needs a third field, `purge`",
        ));
    }
    let id = state
        .purges
        .enqueue(request, &grant.name)
        .await
        .map_err(|refused| match refused {
            Refused::NoTargets => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_purge_targets", refused.to_string())
            }
            Refused::UnknownTarget(..) => ApiError::invalid("targets", refused.to_string()),
            Refused::Invalid(message) => ApiError::invalid("objects", message),
            Refused::Index(error) => error.into(),
        })?;
    tracing::info!(purge = %id, who = %grant.name, "purge queued");
    let body = serde_json::json!({ "id": id, "status": "queued", "url": format!("/v1/purges/{id}") });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

pub(super) async fn list(State(state): Shared, RawQuery(raw): RawQuery) -> AppResult<Json<Page<PurgeView>>> {
    let (mut skip, mut limit, mut filter) = (0, 100, PurgeFilter::default());
    for (name, value) in query_pairs(raw.as_deref()) {
        if paging(&name, &value, &mut skip, &mut limit)? {
            continue;
        }
        let time = |value: &str| {
            value
                .parse::<Timestamp>()
                .map_err(|_| ApiError::invalid(&name, format!("`{value}` is not an RFC 3339 time")))
        };
        match name.as_str() {
            "object" => filter.object = Some(value),
            "target" => filter.target = Some(value),
            "outcome" => filter.outcome = Some(value),
            "since" => filter.since = Some(time(&value)?),
            "until" => filter.until = Some(time(&value)?),
            _ => return Err(ApiError::invalid(&name, format!("unknown parameter `{name}`"))),
        }
    }
    Ok(Json(listed(&state, filter, skip, limit).await?))
}

/// A page of the history, each purge with its lines (the API's listing
/// and the dashboard's page).
pub(crate) async fn listed(state: &AppState, filter: PurgeFilter, skip: u64, limit: u64) -> AppResult<Page<PurgeView>> {
    let page = state.index.purges(filter, skip, limit).await?;
    Ok(Page {
        items: page
            .items
            .into_iter()
            .map(|(row, lines)| view(row, lines, false))
            .collect(),
        total: page.total,
    })
}

pub(super) async fn get_one(State(state): Shared, Path(id): Path<String>) -> AppResult<Json<PurgeView>> {
    let (row, lines) = state
        .index
        .purge(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("purge"))?;
    Ok(Json(view(row, lines, true)))
}
