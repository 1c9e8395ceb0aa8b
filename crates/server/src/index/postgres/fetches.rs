//! Fetches: starting, claiming and renewing leases, recording how a fetch
//! ended, the schedule, and the limits enforced when versions come and go.
use super::*;

pub(super) async fn enforce_limits(
    tx: &Transaction<'_>,
    resource_id: &str,
    now: Timestamp,
    protected: &[String],
) -> Result<Vec<String>, IndexError> {
    let Some(row) = tx
        .query_opt("SELECT limits FROM resources WHERE id = $1", &[&resource_id])
        .await?
    else {
        return Ok(Vec::new());
    };
    let limits: Limits = parse("resource limits", row.try_get(0)?)?;
    let mut doomed: Vec<(String, Option<String>)> = Vec::new();
    for (condition, keep) in [
        (format!("status = 'ready' AND NOT {PINNED_NOW}"), limits.max_unpinned),
        (
            "status = 'failed' AND $2::bigint IS NOT NULL".to_owned(),
            limits.max_failed,
        ),
    ] {
        let sql = format!(
            "SELECT id, sha256 FROM versions WHERE resource_id = $1 AND {condition} ORDER BY id DESC OFFSET $3"
        );
        let statement = tx.prepare_cached(&sql).await?;
        for row in tx
            .query(&statement, &[&resource_id, &millis(now), &i64::from(keep)])
            .await?
        {
            let id: String = row.try_get(0)?;
            if !protected.contains(&id) {
                doomed.push((id, row.try_get(1)?));
            }
        }
    }
    if !doomed.is_empty() {
        // Replicas caching this resource's versions read it again.
        notify(tx).await?;
    }
    let mut orphans = Vec::new();
    for (id, sha) in doomed {
        tx.execute("DELETE FROM versions WHERE id = $1", &[&id]).await?;
        orphans.extend(sha);
    }
    unreferenced(tx, orphans).await
}

pub(super) async fn unreferenced(tx: &Transaction<'_>, mut shas: Vec<String>) -> Result<Vec<String>, IndexError> {
    shas.sort();
    shas.dedup();
    let statement = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM versions WHERE sha256 = $1)")
        .await?;
    let mut orphans = Vec::new();
    for sha in shas {
        if !tx.query_one(&statement, &[&sha]).await?.try_get::<_, bool>(0)? {
            orphans.push(sha);
        }
    }
    Ok(orphans)
}

pub(super) async fn reschedule(
    tx: &Transaction<'_>,
    resource_id: &str,
    now: Timestamp,
    status_code: Option<Option<u16>>,
) -> Result<(), IndexError> {
    let row = tx
        .query_one(
            "SELECT strategy, failures FROM resources WHERE id = $1",
            &[&resource_id],
        )
        .await?;
    let strategy: Strategy = parse("resource strategy", row.try_get(0)?)?;
    let failures = u32::try_from(row.try_get::<_, i64>(1)?).unwrap_or(u32::MAX);
    let failure = status_code.map(|status_code| schedule::Failure {
        in_a_row: failures,
        status_code,
    });
    let next = schedule::next_check(&strategy, now, failure).map(millis);
    tx.execute(
        "UPDATE resources SET next_check_at = $2, last_checked_at = $3 WHERE id = $1",
        &[&resource_id, &next, &millis(now)],
    )
    .await?;
    Ok(())
}

/// Gives an unfinished version to `lease`, as pending again, unless a live
/// lease holds it. Answers whether it did.
pub(super) async fn hold(tx: &Transaction<'_>, version_id: &str, lease: &Lease) -> Result<bool, IndexError> {
    let sql = format!(
        "UPDATE versions SET status = 'pending', lease_holder = $2, lease_expires_at = {DB_MILLIS} + $3
         WHERE id = $1 AND {UNFINISHED} AND (lease_expires_at IS NULL OR lease_expires_at <= {DB_MILLIS})"
    );
    Ok(tx
        .execute(&sql, &[&version_id, &lease.holder, &lease.ttl_millis()])
        .await?
        == 1)
}

pub(super) async fn insert_pending(
    tx: &Transaction<'_>,
    resource_id: &str,
    lease: &Lease,
    now: Timestamp,
) -> Result<Version, IndexError> {
    let id = uuid::Uuid::now_v7().to_string();
    let sql = format!(
        "INSERT INTO versions (id, resource_id, status, created_at, lease_holder, lease_expires_at)
         VALUES ($1, $2, 'pending', $3, $4, {DB_MILLIS} + $5)"
    );
    tx.execute(
        &sql,
        &[&id, &resource_id, &millis(now), &lease.holder, &lease.ttl_millis()],
    )
    .await?;
    tx.execute(
        "UPDATE resources SET next_check_at = NULL WHERE id = $1",
        &[&resource_id],
    )
    .await?;
    load_version(tx, resource_id, &id, now)
        .await?
        .ok_or(IndexError::Corrupt {
            what: "version",
            detail: "vanished while starting a fetch".into(),
        })
}

/// Enforces every resource's limits, one transaction per resource: a
/// collection never holds every resource's row at once.
pub(super) async fn collect_each(
    client: &mut deadpool_postgres::Object,
    now: Timestamp,
    protected: &[String],
) -> Result<Vec<String>, IndexError> {
    let ids: Vec<String> = client
        .query("SELECT id FROM resources", &[])
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut orphans = Vec::new();
    for id in ids {
        let collected = async {
            let tx = client.transaction().await?;
            // Rows in the order a fetch's record takes them; one being
            // recorded right now is enforced by that record.
            let free = tx
                .query_opt("SELECT 1 FROM resources WHERE id = $1 FOR UPDATE SKIP LOCKED", &[&id])
                .await?
                .is_some();
            let freed = if free {
                enforce_limits(&tx, &id, now, protected).await?
            } else {
                Vec::new()
            };
            tx.commit().await?;
            Ok::<_, IndexError>(freed)
        }
        .await;
        match collected {
            Ok(freed) => orphans.extend(freed),
            // What was collected is committed: its blobs must still go.
            Err(error) if !orphans.is_empty() => {
                tracing::warn!(%error, "collection stopped part way");
                break;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(orphans)
}

pub(super) async fn start_version(
    index: &PgIndex,
    resource_id: &str,
    lease: &Lease,
    now: Timestamp,
) -> Result<Start, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    if !lock_resource(&tx, resource_id).await? {
        return Ok(Start::NotFound);
    }
    let unfinished = tx
        .query_opt(
            &format!("SELECT id FROM versions WHERE resource_id = $1 AND {UNFINISHED} ORDER BY id DESC LIMIT 1"),
            &[&resource_id],
        )
        .await?;
    let start = match unfinished {
        Some(row) => {
            let id: String = row.try_get(0)?;
            let taken = hold(&tx, &id, lease).await?;
            let version = load_version(&tx, resource_id, &id, now)
                .await?
                .ok_or(IndexError::Corrupt {
                    what: "version",
                    detail: "vanished while starting a fetch".into(),
                })?;
            if taken {
                Start::TakenOver(version)
            } else {
                Start::Running(version)
            }
        }
        None => Start::Started(insert_pending(&tx, resource_id, lease, now).await?),
    };
    if !matches!(start, Start::Running(_)) {
        notify(&tx).await?;
    }
    tx.commit().await?;
    Ok(start)
}

pub(super) async fn claim(index: &PgIndex, lease: &Lease, now: Timestamp, max: usize) -> Result<Claimed, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    let mut claimed = Claimed::default();
    let max = clamp(max as u64);
    // Rows another replica is claiming are skipped, not waited for.
    let expired = tx
        .query(
            &format!(
                "SELECT resource_id, id FROM versions WHERE {UNFINISHED}
                 AND (lease_expires_at IS NULL OR lease_expires_at <= {DB_MILLIS})
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            &[&max],
        )
        .await?;
    for row in expired {
        let (resource_id, id): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        let newer: bool = tx
            .query_one(
                &format!("SELECT EXISTS (SELECT 1 FROM versions WHERE resource_id = $1 AND {UNFINISHED} AND id > $2)"),
                &[&resource_id, &id],
            )
            .await?
            .try_get(0)?;
        if newer {
            // A resource fetched twice at once keeps its newest fetch.
            tx.execute(
                "UPDATE versions SET status = 'failed', error = $2, lease_holder = NULL, lease_expires_at = NULL WHERE id = $1",
                &[&id, &SUPERSEDED],
            )
            .await?;
            continue;
        }
        if hold(&tx, &id, lease).await?
            && let Some(version) = load_version(&tx, &resource_id, &id, now).await?
        {
            claimed.taken_over.push((resource_id, version));
        }
    }
    let room = max.saturating_sub(i64::try_from(claimed.taken_over.len()).unwrap_or(i64::MAX));
    let due = tx
        .query(
            &format!(
                "SELECT id FROM resources WHERE next_check_at <= $1
                 AND NOT EXISTS (SELECT 1 FROM versions WHERE resource_id = resources.id AND {UNFINISHED})
                 ORDER BY next_check_at LIMIT $2 FOR UPDATE SKIP LOCKED"
            ),
            &[&millis(now), &room],
        )
        .await?;
    for row in due {
        let resource_id: String = row.try_get(0)?;
        let version = insert_pending(&tx, &resource_id, lease, now).await?;
        claimed.started.push((resource_id, version));
    }
    let next = tx
        .query_one(
            &format!(
                "SELECT (SELECT MIN(next_check_at) FROM resources WHERE next_check_at > $1),
                        (SELECT MIN(lease_expires_at) - {DB_MILLIS} FROM versions WHERE {UNFINISHED} AND lease_expires_at > {DB_MILLIS})"
            ),
            &[&millis(now)],
        )
        .await?;
    let next_check: Option<i64> = next.try_get(0)?;
    // A lease's end is on the database's clock; the schedule's on ours.
    let next_expiry = next
        .try_get::<_, Option<i64>>(1)?
        .map(|left| millis(now).saturating_add(left));
    claimed.next = from_millis(next_check.into_iter().chain(next_expiry).min());
    if !claimed.started.is_empty() || !claimed.taken_over.is_empty() {
        notify(&tx).await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

pub(super) async fn renew(index: &PgIndex, lease: &Lease, version_ids: Vec<String>) -> Result<Vec<String>, IndexError> {
    if version_ids.is_empty() {
        return Ok(Vec::new());
    }
    let client = index.client().await?;
    // The SELECT sees the rows as they were before the UPDATE: those
    // renewed were ours, so only versions another holder has are answered.
    let rows = client
        .query(
            &format!(
                "WITH renewed AS (
                     UPDATE versions SET lease_expires_at = {DB_MILLIS} + $3
                     WHERE id = ANY($1) AND lease_holder = $2 AND {UNFINISHED} RETURNING id
                 )
                 SELECT id FROM versions WHERE id = ANY($1) AND {UNFINISHED} AND lease_holder IS DISTINCT FROM $2"
            ),
            &[&version_ids, &lease.holder, &lease.ttl_millis()],
        )
        .await?;
    Ok(rows.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>()?)
}

pub(super) async fn lose_blob(index: &PgIndex, sha256: &str, now: Timestamp) -> Result<Vec<String>, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    let resources: Vec<String> = tx
        .query(
            "UPDATE versions SET status = 'failed', error = $2, pinned = FALSE, pinned_until = NULL
             WHERE sha256 = $1 AND status = 'ready' RETURNING resource_id",
            &[&sha256, &BODY_LOST],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut resources = resources;
    resources.sort();
    resources.dedup();
    tx.execute(
        &format!(
            "UPDATE resources SET next_check_at = $2 WHERE id = ANY($1)
             AND NOT EXISTS (SELECT 1 FROM versions WHERE resource_id = resources.id AND {UNFINISHED})"
        ),
        &[&resources, &millis(now)],
    )
    .await?;
    notify(&tx).await?;
    tx.commit().await?;
    Ok(resources)
}

pub(super) async fn fetching(index: &PgIndex, resource_id: &str) -> Result<bool, IndexError> {
    let client = index.client().await?;
    Ok(client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM versions WHERE resource_id = $1 AND {UNFINISHED} AND lease_expires_at > {DB_MILLIS})"
            ),
            &[&resource_id],
        )
        .await?
        .try_get(0)?)
}

pub(super) async fn set_downloading(index: &PgIndex, version_id: &str) -> Result<(), IndexError> {
    let client = index.client().await?;
    client
        .execute(
            "UPDATE versions SET status = 'downloading' WHERE id = $1 AND status = 'pending'",
            &[&version_id],
        )
        .await?;
    Ok(())
}

pub(super) async fn finish(
    index: &PgIndex,
    resource_id: &str,
    version_id: &str,
    finish: Finish,
    lease: &Lease,
    now: Timestamp,
    protected: Vec<String>,
) -> Result<Vec<String>, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    if !lock_resource(&tx, resource_id).await? {
        // Deleted while fetching: the fetch's blob may be an orphan.
        return match finish {
            Finish::Ready(version) => unreferenced(&tx, version.sha256.into_iter().collect()).await,
            _ => Ok(Vec::new()),
        };
    }
    let holder: Option<Option<String>> = tx
        // Locked: a claim can't take the fetch over while it is recorded.
        .query_opt(
            "SELECT lease_holder FROM versions WHERE id = $1 FOR UPDATE",
            &[&version_id],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    if holder.is_some_and(|holder| holder.as_deref() != Some(lease.holder.as_str())) {
        return Err(IndexError::LeaseLost);
    }
    record_version(&tx, resource_id, version_id, &finish, now).await?;
    let failed = record_attempt(&tx, resource_id, &finish, now).await?;
    reschedule(&tx, resource_id, now, failed).await?;
    let mut orphans = enforce_limits(&tx, resource_id, now, &protected).await?;
    if let Finish::Ready(version) = &finish {
        // The new version's own blob is referenced: never an orphan.
        orphans.retain(|sha| Some(sha) != version.sha256.as_ref());
    }
    notify(&tx).await?;
    tx.commit().await?;
    Ok(orphans)
}

pub(super) async fn schedule_run_at_start(index: &PgIndex, now: Timestamp) -> Result<(), IndexError> {
    let client = index.client().await?;
    client
        .execute(
            &format!(
                "UPDATE resources SET next_check_at = $1
                 WHERE strategy::jsonb ->> 'kind' = 'cron' AND COALESCE((strategy::jsonb ->> 'run_at_start')::boolean, FALSE)
                 AND NOT EXISTS (SELECT 1 FROM versions WHERE resource_id = resources.id AND {UNFINISHED})"
            ),
            &[&millis(now)],
        )
        .await?;
    Ok(())
}

pub(super) async fn collect(
    index: &PgIndex,
    now: Timestamp,
    protected: Vec<String>,
) -> Result<Vec<String>, IndexError> {
    let mut client = index.client().await?;
    // One replica collects at a time; the others skip their turn.
    let ours: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&COLLECT_LOCK])
        .await?
        .try_get(0)?;
    if !ours {
        return Ok(Vec::new());
    }
    let collected = collect_each(&mut client, now, &protected).await;
    if client
        .execute("SELECT pg_advisory_unlock($1)", &[&COLLECT_LOCK])
        .await
        .is_err()
    {
        // Closing the session releases its lock.
        drop(deadpool_postgres::Object::take(client));
    }
    collected
}

/// Records how a fetch ended on its version: ready, gone (an unchanged
/// body: the check goes on the newest version), or failed.
async fn record_version(
    tx: &Transaction<'_>,
    resource_id: &str,
    version_id: &str,
    finish: &Finish,
    now: Timestamp,
) -> Result<(), IndexError> {
    match finish {
        Finish::Ready(version) => {
            tx.execute(
                "UPDATE versions SET status = 'ready', fetched_at = $2, last_checked_at = $2, status_code = $3,
                 headers = $4, size = $5, sha256 = $6, media_type = $7, etag = $8, last_modified = $9, error = NULL,
                 cache_tags = $10, lease_holder = NULL, lease_expires_at = NULL
                 WHERE id = $1",
                &[
                    &version_id,
                    &millis(now),
                    &version.status_code.map(i64::from),
                    &json(&version.headers),
                    &version.size.and_then(|size| i64::try_from(size).ok()),
                    &version.sha256,
                    &version.media_type,
                    &version.etag,
                    &version.last_modified,
                    &json(&version.cache_tags),
                ],
            )
            .await?;
            if let Some(sha) = &version.sha256 {
                tx.execute("DELETE FROM doomed_blobs WHERE sha256 = $1", &[sha]).await?;
            }
            let tagged = tx
                .prepare_cached("INSERT INTO cache_tags (tag, resource_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .await?;
            for tag in &version.cache_tags {
                tx.execute(&tagged, &[tag, &resource_id]).await?;
            }
        }
        Finish::Unchanged {
            latest,
            etag,
            last_modified,
        } => {
            tx.execute("DELETE FROM versions WHERE id = $1", &[&version_id]).await?;
            tx.execute(
                "UPDATE versions SET last_checked_at = $2, etag = COALESCE($3, etag),
                 last_modified = COALESCE($4, last_modified) WHERE id = $1",
                &[latest, &millis(now), etag, last_modified],
            )
            .await?;
        }
        Finish::Failed { status_code, error } => {
            tx.execute(
                "UPDATE versions SET status = 'failed', status_code = $2, error = $3, last_checked_at = $4,
                 lease_holder = NULL, lease_expires_at = NULL WHERE id = $1",
                &[&version_id, &status_code.map(i64::from), error, &millis(now)],
            )
            .await?;
        }
    }
    Ok(())
}

/// Records the attempt on the resource: its failures in a row and last
/// error. Answers the failure's status, for the schedule's backoff.
async fn record_attempt(
    tx: &Transaction<'_>,
    resource_id: &str,
    finish: &Finish,
    now: Timestamp,
) -> Result<Option<Option<u16>>, IndexError> {
    Ok(match finish {
        Finish::Failed { status_code, error } => {
            tx.execute(
                "UPDATE resources SET failures = failures + 1, last_error = $2, last_attempt_at = $3 WHERE id = $1",
                &[&resource_id, error, &millis(now)],
            )
            .await?;
            Some(*status_code)
        }
        _ => {
            tx.execute(
                "UPDATE resources SET failures = 0, last_error = NULL, last_attempt_at = $2 WHERE id = $1",
                &[&resource_id, &millis(now)],
            )
            .await?;
            None
        }
    })
}
