//! Reads: resources, versions, and what a collection keeps.
use super::*;

pub(super) async fn resource(index: &PgIndex, id: &str) -> Result<Option<Resource>, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    load_resource(&tx, id).await
}

pub(super) async fn resources(
    index: &PgIndex,
    groups: Option<Vec<String>>,
    filter: ResourceFilter,
    skip: u64,
    limit: u64,
) -> Result<Page<Resource>, IndexError> {
    let mut client = index.client().await?;
    let tx = snapshot(&mut client).await?;
    let ResourceFilter {
        group,
        cache_tag,
        url_contains,
        strategy,
        newest_status,
        failing,
    } = filter;
    let newest_status = newest_status.map(|status| status.as_str());
    // `strpos`, not LIKE: the text is matched as typed, `%` and `_` included.
    let condition = "($1::text[] IS NULL OR grp = ANY($1)) AND ($2::text IS NULL OR grp = $2)
        AND ($3::text IS NULL OR id IN (SELECT resource_id FROM cache_tags WHERE tag = $3))
        AND ($4::text IS NULL OR strpos(url, $4) > 0)
        AND ($5::text IS NULL OR strategy::jsonb ->> 'kind' = $5)
        AND ($6::text IS NULL OR (SELECT status FROM versions WHERE resource_id = resources.id ORDER BY id DESC LIMIT 1) = $6)
        AND ($7::boolean IS NULL OR (last_error IS NOT NULL) = $7)";
    let filters: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
        &groups,
        &group,
        &cache_tag,
        &url_contains,
        &strategy,
        &newest_status,
        &failing,
    ];
    let total = count(
        &tx.query_one(&format!("SELECT COUNT(*) FROM resources WHERE {condition}"), &filters)
            .await?,
    )?;
    let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE {condition} ORDER BY id LIMIT $8 OFFSET $9");
    let (limit, skip) = (clamp(limit), clamp(skip));
    let mut paged = filters.to_vec();
    paged.extend([&limit as &(dyn tokio_postgres::types::ToSql + Sync), &skip]);
    let rows = tx.query(&sql, &paged).await?;
    let items = rows
        .iter()
        .map(|row| finish_resource(raw_resource(row)?))
        .collect::<Result<_, _>>()?;
    Ok(Page { items, total })
}

pub(super) async fn versions(
    index: &PgIndex,
    resource_id: &str,
    filter: VersionQuery,
    now: Timestamp,
) -> Result<Page<Version>, IndexError> {
    let mut client = index.client().await?;
    let tx = snapshot(&mut client).await?;
    let conditions = format!(
        "resource_id = $1 AND $2::bigint IS NOT NULL AND ($3::text IS NULL OR status = $3)
         AND ($4::text IS NULL OR tags::jsonb ? $4)
         AND ($5::boolean IS NULL OR {PINNED_NOW} = $5)"
    );
    let status = filter.status.map(VersionStatus::as_str);
    let total = count(
        &tx.query_one(
            &format!("SELECT COUNT(*) FROM versions WHERE {conditions}"),
            &[&resource_id, &millis(now), &status, &filter.tag, &filter.pinned],
        )
        .await?,
    )?;
    let sql = format!("SELECT {VERSION_COLUMNS} FROM versions WHERE {conditions} ORDER BY id DESC LIMIT $6 OFFSET $7");
    let items = query_versions(
        &tx,
        &sql,
        &[
            &resource_id,
            &millis(now),
            &status,
            &filter.tag,
            &filter.pinned,
            &clamp(filter.limit),
            &clamp(filter.skip),
        ],
        now,
    )
    .await?;
    Ok(Page { items, total })
}

pub(super) async fn selectable(
    index: &PgIndex,
    resource_id: &str,
    now: Timestamp,
) -> Result<Option<(Resource, Vec<Version>)>, IndexError> {
    let mut client = index.client().await?;
    // One snapshot for both reads.
    let tx = snapshot(&mut client).await?;
    let Some(resource) = load_resource(&tx, resource_id).await? else {
        return Ok(None);
    };
    let sql =
        format!("SELECT {VERSION_COLUMNS} FROM versions WHERE resource_id = $1 AND status = 'ready' ORDER BY id DESC");
    let ready = query_versions(&tx, &sql, &[&resource_id], now).await?;
    Ok(Some((resource, ready)))
}

pub(super) async fn version(
    index: &PgIndex,
    resource_id: &str,
    version_id: &str,
    now: Timestamp,
) -> Result<Option<Version>, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    load_version(&tx, resource_id, version_id, now).await
}

pub(super) async fn next_pin_end(index: &PgIndex, now: Timestamp) -> Result<Option<Timestamp>, IndexError> {
    let client = index.client().await?;
    let next: Option<i64> = client
        .query_one(
            "SELECT MIN(pinned_until) FROM versions WHERE pinned AND pinned_until > $1",
            &[&millis(now)],
        )
        .await?
        .try_get(0)?;
    Ok(from_millis(next))
}

pub(super) async fn referenced_blobs(index: &PgIndex) -> Result<HashSet<String>, IndexError> {
    let client = index.client().await?;
    Ok(client
        .query("SELECT DISTINCT sha256 FROM versions WHERE sha256 IS NOT NULL", &[])
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?)
}

pub(super) async fn doomed_blobs(index: &PgIndex) -> Result<HashSet<String>, IndexError> {
    let client = index.client().await?;
    Ok(client
        .query("SELECT sha256 FROM doomed_blobs", &[])
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?)
}
