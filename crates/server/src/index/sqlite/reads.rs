//! Reads: resources, versions, and what a collection keeps.
use super::*;

pub(super) async fn resource(index: &SqliteIndex, id: &str) -> Result<Option<Resource>, IndexError> {
    let id = id.to_owned();
    index.read(move |tx| load_resource(tx, &id)).await
}

pub(super) async fn resources(
    index: &SqliteIndex,
    groups: Option<Vec<String>>,
    filter: ResourceFilter,
    skip: u64,
    limit: u64,
) -> Result<Page<Resource>, IndexError> {
    index
        .read(move |tx| {
            let groups_json = groups.as_ref().map(json);
            let ResourceFilter {
                group,
                cache_tag,
                url_contains,
                strategy,
                newest_status,
                failing,
            } = filter;
            let newest_status = newest_status.map(|status| status.as_str());
            // `instr`, not LIKE: the text is matched as typed, `%` and `_` included.
            let filter = "(?1 IS NULL OR grp IN (SELECT value FROM json_each(?1))) AND (?2 IS NULL OR grp = ?2)
            AND (?3 IS NULL OR id IN (SELECT resource_id FROM cache_tags WHERE tag = ?3))
            AND (?4 IS NULL OR instr(url, ?4) > 0)
            AND (?5 IS NULL OR json_extract(strategy, '$.kind') = ?5)
            AND (?6 IS NULL OR (SELECT status FROM versions WHERE resource_id = resources.id ORDER BY id DESC LIMIT 1) = ?6)
            AND (?7 IS NULL OR (last_error IS NOT NULL) = ?7)";
            let filters = params![groups_json, group, cache_tag, url_contains, strategy, newest_status, failing];
            let total: i64 = tx.query_row(
                &format!("SELECT COUNT(*) FROM resources WHERE {filter}"),
                filters,
                |row| row.get(0),
            )?;
            let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE {filter} ORDER BY id LIMIT ?8 OFFSET ?9");
            let (limit, skip) = (clamp(limit), clamp(skip));
            let paged: Vec<&dyn rusqlite::ToSql> = filters.iter().copied().chain([&limit as &dyn rusqlite::ToSql, &skip]).collect();
            let mut statement = tx.prepare_cached(&sql)?;
            let raws = statement
                .query_map(paged.as_slice(), raw_resource)?
                .collect::<Result<Vec<_>, _>>()?;
            let items = raws.into_iter().map(finish_resource).collect::<Result<_, _>>()?;
            Ok(Page {
                items,
                total: u64::try_from(total).unwrap_or_default(),
            })
        })
        .await
}

pub(super) async fn versions(
    index: &SqliteIndex,
    resource_id: &str,
    filter: VersionQuery,
    now: Timestamp,
) -> Result<Page<Version>, IndexError> {
    let resource_id = resource_id.to_owned();
    index
        .read(move |tx| {
            let conditions = format!(
                "resource_id = ?1 AND ?2 = ?2 AND (?3 IS NULL OR status = ?3)
             AND (?4 IS NULL OR EXISTS (SELECT 1 FROM json_each(tags) WHERE value = ?4))
             AND (?5 IS NULL OR {PINNED_NOW} = ?5)"
            );
            let status = filter.status.map(VersionStatus::as_str);
            let values = params![resource_id, millis(now), status, filter.tag, filter.pinned];
            let total: i64 = tx.query_row(
                &format!("SELECT COUNT(*) FROM versions WHERE {conditions}"),
                values,
                |row| row.get(0),
            )?;
            let sql = format!(
                "SELECT {VERSION_COLUMNS} FROM versions WHERE {conditions} ORDER BY id DESC LIMIT ?6 OFFSET ?7"
            );
            let items = query_versions(
                tx,
                &sql,
                params![
                    resource_id,
                    millis(now),
                    status,
                    filter.tag,
                    filter.pinned,
                    clamp(filter.limit),
                    clamp(filter.skip)
                ],
                now,
            )?;
            Ok(Page {
                items,
                total: u64::try_from(total).unwrap_or_default(),
            })
        })
        .await
}

pub(super) async fn selectable(
    index: &SqliteIndex,
    resource_id: &str,
    now: Timestamp,
) -> Result<Option<(Resource, Vec<Version>)>, IndexError> {
    let resource_id = resource_id.to_owned();
    index.read(move |connection| {
        // One snapshot for both reads.
        let tx = connection.unchecked_transaction()?;
        let Some(resource) = load_resource(&tx, &resource_id)? else { return Ok(None) };
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE resource_id = ?1 AND status = 'ready' AND ?2 = ?2 ORDER BY id DESC"
        );
        let ready = query_versions(&tx, &sql, params![resource_id, millis(now)], now)?;
        Ok(Some((resource, ready)))
    })
    .await
}

pub(super) async fn version(
    index: &SqliteIndex,
    resource_id: &str,
    version_id: &str,
    now: Timestamp,
) -> Result<Option<Version>, IndexError> {
    let (resource_id, version_id) = (resource_id.to_owned(), version_id.to_owned());
    index
        .read(move |tx| load_version(tx, &resource_id, &version_id, now))
        .await
}

pub(super) async fn next_pin_end(index: &SqliteIndex, now: Timestamp) -> Result<Option<Timestamp>, IndexError> {
    index
        .read(move |tx| {
            let next: Option<i64> = tx.query_row(
                "SELECT MIN(pinned_until) FROM versions WHERE pinned = 1 AND pinned_until > ?1",
                [millis(now)],
                |row| row.get(0),
            )?;
            Ok(from_millis(next))
        })
        .await
}

pub(super) async fn referenced_blobs(index: &SqliteIndex) -> Result<HashSet<String>, IndexError> {
    index
        .read(|tx| {
            let shas = tx
                .prepare_cached("SELECT DISTINCT sha256 FROM versions WHERE sha256 IS NOT NULL")?
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(shas)
        })
        .await
}

pub(super) async fn doomed_blobs(index: &SqliteIndex) -> Result<HashSet<String>, IndexError> {
    index
        .read(|tx| {
            Ok(tx
                .prepare_cached("SELECT sha256 FROM doomed_blobs")?
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?)
        })
        .await
}
