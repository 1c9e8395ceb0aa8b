//! Reading rows into the model, and the locks and notifications every
//! transaction shares.
use super::*;

pub(super) fn raw_version(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawVersion> {
    Ok(RawVersion {
        version: Version {
            id: row.get(0)?,
            status: VersionStatus::Pending,
            created_at: from_millis(row.get(2)?).unwrap_or(Timestamp::UNIX_EPOCH),
            fetched_at: from_millis(row.get(3)?),
            last_checked_at: from_millis(row.get(4)?),
            status_code: row.get(5)?,
            headers: Vec::new(),
            size: row.get::<_, Option<i64>>(7)?.and_then(|size| u64::try_from(size).ok()),
            sha256: row.get(8)?,
            media_type: row.get(9)?,
            etag: row.get(10)?,
            last_modified: row.get(11)?,
            tags: Vec::new(),
            cache_tags: Vec::new(),
            pinned: false,
            pinned_until: from_millis(row.get(14)?),
            error: row.get(15)?,
        },
        headers: row.get(6)?,
        tags: row.get(12)?,
        cache_tags: row.get(16)?,
        pinned: row.get::<_, i64>(13)? != 0,
        status: row.get(1)?,
    })
}

pub(super) fn raw_resource(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawResource> {
    Ok((
        Resource {
            id: row.get(0)?,
            method: row.get(1)?,
            url: row.get(2)?,
            query: Vec::new(),
            headers: Default::default(),
            body: None,
            group: row.get(6)?,
            strategy: Strategy::Never,
            limits: Limits::default(),
            created_at: from_millis(row.get(9)?).unwrap_or(Timestamp::UNIX_EPOCH),
            last_checked_at: from_millis(row.get(10)?),
            next_check_at: from_millis(row.get(11)?),
            last_attempt_at: from_millis(row.get(12)?),
            last_error: row.get(13)?,
            failures: row.get(14)?,
            description: row.get(15)?,
            link: row.get(16)?,
            purge_on_change: row.get(17)?,
        },
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(7)?,
        row.get(8)?,
    ))
}

pub(super) fn query_versions(
    tx: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    now: Timestamp,
) -> Result<Vec<Version>, IndexError> {
    let mut statement = tx.prepare_cached(sql)?;
    let raws = statement
        .query_map(params, raw_version)?
        .collect::<Result<Vec<_>, _>>()?;
    raws.into_iter().map(|raw| finish_version(raw, now)).collect()
}

pub(super) fn load_version(
    tx: &Connection,
    resource_id: &str,
    version_id: &str,
    now: Timestamp,
) -> Result<Option<Version>, IndexError> {
    let sql = if version_id == "latest" {
        format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE resource_id = ?1 AND status = 'ready' AND ?2 = ?2 ORDER BY id DESC LIMIT 1"
        )
    } else {
        format!("SELECT {VERSION_COLUMNS} FROM versions WHERE resource_id = ?1 AND id = ?2")
    };
    if version_id == "latest" {
        Ok(query_versions(tx, &sql, params![resource_id, millis(now)], now)?
            .into_iter()
            .next())
    } else {
        Ok(query_versions(tx, &sql, params![resource_id, version_id], now)?
            .into_iter()
            .next())
    }
}

pub(super) fn load_resource(tx: &Connection, id: &str) -> Result<Option<Resource>, IndexError> {
    let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE id = ?1");
    let raw = tx.prepare_cached(&sql)?.query_row([id], raw_resource).optional()?;
    raw.map(finish_resource).transpose()
}
