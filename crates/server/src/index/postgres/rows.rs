//! Reading rows into the model, and the locks and notifications every
//! transaction shares.
use super::*;

pub(super) fn raw_version(row: &Row) -> Result<RawVersion, IndexError> {
    let get_millis = |index: usize| -> Result<Option<Timestamp>, IndexError> { Ok(from_millis(row.try_get(index)?)) };
    Ok(RawVersion {
        version: Version {
            id: row.try_get(0)?,
            status: VersionStatus::Pending,
            created_at: get_millis(2)?.unwrap_or(Timestamp::UNIX_EPOCH),
            fetched_at: get_millis(3)?,
            last_checked_at: get_millis(4)?,
            status_code: row
                .try_get::<_, Option<i64>>(5)?
                .and_then(|code| u16::try_from(code).ok()),
            headers: Vec::new(),
            size: row
                .try_get::<_, Option<i64>>(7)?
                .and_then(|size| u64::try_from(size).ok()),
            sha256: row.try_get(8)?,
            media_type: row.try_get(9)?,
            etag: row.try_get(10)?,
            last_modified: row.try_get(11)?,
            tags: Vec::new(),
            cache_tags: Vec::new(),
            pinned: false,
            pinned_until: get_millis(14)?,
            error: row.try_get(15)?,
        },
        headers: row.try_get(6)?,
        tags: row.try_get(12)?,
        cache_tags: row.try_get(16)?,
        pinned: row.try_get(13)?,
        status: row.try_get(1)?,
    })
}

pub(super) fn raw_resource(row: &Row) -> Result<RawResource, IndexError> {
    let get_millis = |index: usize| -> Result<Option<Timestamp>, IndexError> { Ok(from_millis(row.try_get(index)?)) };
    Ok((
        Resource {
            id: row.try_get(0)?,
            method: row.try_get(1)?,
            url: row.try_get(2)?,
            query: Vec::new(),
            headers: Default::default(),
            body: None,
            group: row.try_get(6)?,
            strategy: Strategy::Never,
            limits: Limits::default(),
            created_at: get_millis(9)?.unwrap_or(Timestamp::UNIX_EPOCH),
            last_checked_at: get_millis(10)?,
            next_check_at: get_millis(11)?,
            last_attempt_at: get_millis(12)?,
            last_error: row.try_get(13)?,
            failures: u32::try_from(row.try_get::<_, i64>(14)?).unwrap_or(u32::MAX),
            description: row.try_get(15)?,
            link: row.try_get(16)?,
            purge_on_change: row.try_get(17)?,
        },
        row.try_get(3)?,
        row.try_get(4)?,
        row.try_get(5)?,
        row.try_get(7)?,
        row.try_get(8)?,
    ))
}

pub(super) async fn query_versions(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    now: Timestamp,
) -> Result<Vec<Version>, IndexError> {
    let statement = tx.prepare_cached(sql).await?;
    let rows = tx.query(&statement, params).await?;
    rows.iter().map(|row| finish_version(raw_version(row)?, now)).collect()
}

pub(super) async fn load_version(
    tx: &Transaction<'_>,
    resource_id: &str,
    version_id: &str,
    now: Timestamp,
) -> Result<Option<Version>, IndexError> {
    let versions = if version_id == "latest" {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE resource_id = $1 AND status = 'ready' ORDER BY id DESC LIMIT 1"
        );
        query_versions(tx, &sql, &[&resource_id], now).await?
    } else {
        let sql = format!("SELECT {VERSION_COLUMNS} FROM versions WHERE resource_id = $1 AND id = $2");
        query_versions(tx, &sql, &[&resource_id, &version_id], now).await?
    };
    Ok(versions.into_iter().next())
}

pub(super) async fn load_resource(tx: &Transaction<'_>, id: &str) -> Result<Option<Resource>, IndexError> {
    let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE id = $1");
    let statement = tx.prepare_cached(&sql).await?;
    match tx.query_opt(&statement, &[&id]).await? {
        Some(row) => Ok(Some(finish_resource(raw_resource(&row)?)?)),
        None => Ok(None),
    }
}

/// Locks the resource's row: fetches of one resource start and end one at
/// a time across replicas. Answers whether it exists.
pub(super) async fn lock_resource(tx: &Transaction<'_>, id: &str) -> Result<bool, IndexError> {
    Ok(tx
        .query_opt("SELECT 1 FROM resources WHERE id = $1 FOR UPDATE", &[&id])
        .await?
        .is_some())
}

pub(super) fn count(row: &Row) -> Result<u64, IndexError> {
    Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or_default())
}

pub(super) async fn notify(tx: &Transaction<'_>) -> Result<(), IndexError> {
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
    Ok(())
}

/// A read-only transaction in which every statement sees one committed
/// state: a listing and its count, a resource and its versions.
pub(super) async fn snapshot(client: &mut deadpool_postgres::Object) -> Result<Transaction<'_>, IndexError> {
    Ok(client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}
