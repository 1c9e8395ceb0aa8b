//! Fetches: starting, claiming and renewing leases, recording how a fetch
//! ended, the schedule, and the limits enforced when versions come and go.
use super::*;

/// Deletes the versions beyond the resource's limits, sparing pinned and
/// `protected` ones; answers the blobs no version references any more.
pub(super) fn enforce_limits(
    tx: &Connection,
    resource_id: &str,
    now: Timestamp,
    protected: &[String],
) -> Result<Vec<String>, IndexError> {
    let limits: String = tx.query_row("SELECT limits FROM resources WHERE id = ?1", [resource_id], |row| {
        row.get(0)
    })?;
    let limits: Limits = parse("resource limits", &limits)?;
    let mut doomed: Vec<(String, Option<String>)> = Vec::new();
    for (condition, keep) in [
        (format!("status = 'ready' AND NOT {PINNED_NOW}"), limits.max_unpinned),
        ("status = 'failed' AND ?2 = ?2".to_owned(), limits.max_failed),
    ] {
        let sql = format!(
            "SELECT id, sha256 FROM versions WHERE resource_id = ?1 AND {condition} ORDER BY id DESC LIMIT -1 OFFSET ?3"
        );
        let mut statement = tx.prepare_cached(&sql)?;
        let rows = statement.query_map(params![resource_id, millis(now), keep], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
        for row in rows {
            let (id, sha): (String, Option<String>) = row?;
            if !protected.contains(&id) {
                doomed.push((id, sha));
            }
        }
    }
    let mut orphans = Vec::new();
    for (id, sha) in doomed {
        tx.execute("DELETE FROM versions WHERE id = ?1", [&id])?;
        if let Some(sha) = sha {
            orphans.push(sha);
        }
    }
    unreferenced(tx, orphans)
}

pub(super) fn unreferenced(tx: &Connection, mut shas: Vec<String>) -> Result<Vec<String>, IndexError> {
    shas.sort();
    shas.dedup();
    let mut statement = tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM versions WHERE sha256 = ?1)")?;
    let mut orphans = Vec::new();
    for sha in shas {
        if !statement.query_row([&sha], |row| row.get::<_, bool>(0))? {
            orphans.push(sha);
        }
    }
    Ok(orphans)
}

/// Sets the resource's next check from its strategy, `now` being when the
/// origin was last asked.
pub(super) fn reschedule(
    tx: &Connection,
    resource_id: &str,
    now: Timestamp,
    status_code: Option<Option<u16>>,
) -> Result<(), IndexError> {
    let (strategy, failures): (String, u32) = tx.query_row(
        "SELECT strategy, failures FROM resources WHERE id = ?1",
        [resource_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let strategy: Strategy = parse("resource strategy", &strategy)?;
    let failure = status_code.map(|status_code| schedule::Failure {
        in_a_row: failures,
        status_code,
    });
    let next = schedule::next_check(&strategy, now, failure);
    tx.execute(
        "UPDATE resources SET next_check_at = ?2, last_checked_at = ?3 WHERE id = ?1",
        params![resource_id, next.map(millis), millis(now)],
    )?;
    Ok(())
}

/// Gives an unfinished version to `lease`, as pending again.
pub(super) fn hold(tx: &Connection, version_id: &str, lease: &Lease, clock: i64) -> Result<(), IndexError> {
    tx.execute(
        "UPDATE versions SET status = 'pending', lease_holder = ?2, lease_expires_at = ?3 WHERE id = ?1",
        params![version_id, lease.holder, clock.saturating_add(lease.ttl_millis())],
    )?;
    Ok(())
}

/// A new pending version held by `lease`, and its resource off the schedule.
pub(super) fn insert_pending(
    tx: &Connection,
    resource_id: &str,
    lease: &Lease,
    now: Timestamp,
    clock: i64,
) -> Result<Version, IndexError> {
    let id = uuid::Uuid::now_v7().to_string();
    tx.execute(
        "INSERT INTO versions (id, resource_id, status, created_at, lease_holder, lease_expires_at)
         VALUES (?1, ?2, 'pending', ?3, ?4, ?5)",
        params![
            id,
            resource_id,
            millis(now),
            lease.holder,
            clock.saturating_add(lease.ttl_millis())
        ],
    )?;
    tx.execute("UPDATE resources SET next_check_at = NULL WHERE id = ?1", [resource_id])?;
    load_version(tx, resource_id, &id, now)?.ok_or(IndexError::Corrupt {
        what: "version",
        detail: "vanished while starting a fetch".into(),
    })
}

pub(super) async fn start_version(
    index: &SqliteIndex,
    resource_id: &str,
    lease: &Lease,
    now: Timestamp,
) -> Result<Start, IndexError> {
    let (resource_id, lease) = (resource_id.to_owned(), lease.clone());
    index.transaction(move |tx| {
        if load_resource(tx, &resource_id)?.is_none() {
            return Ok(Start::NotFound);
        }
        let clock = millis(Timestamp::now());
        let unfinished: Option<(String, Option<i64>)> = tx
            .query_row(
                &format!(
                    "SELECT id, lease_expires_at FROM versions WHERE resource_id = ?1 AND {UNFINISHED} ORDER BY id DESC LIMIT 1"
                ),
                [&resource_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        if let Some((id, expires)) = unfinished {
            let running = expires.is_some_and(|expires| expires > clock);
            if !running {
                hold(tx, &id, &lease, clock)?;
            }
            let version = load_version(tx, &resource_id, &id, now)?.ok_or(IndexError::Corrupt {
                what: "version",
                detail: "vanished while starting a fetch".into(),
            })?;
            return Ok(if running {
                Start::Running(version)
            } else {
                Start::TakenOver(version)
            });
        }
        let version = insert_pending(tx, &resource_id, &lease, now, clock)?;
        Ok(Start::Started(version))
    })
    .await
}

pub(super) async fn claim(
    index: &SqliteIndex,
    lease: &Lease,
    now: Timestamp,
    max: usize,
) -> Result<Claimed, IndexError> {
    let lease = lease.clone();
    index
        .transaction(move |tx| {
            let clock = millis(Timestamp::now());
            let mut claimed = Claimed::default();
            // A resource fetched twice at once (an index from before leases)
            // keeps its newest fetch.
            tx.execute(
                &format!(
                    "UPDATE versions SET status = 'failed', error = ?1, lease_holder = NULL, lease_expires_at = NULL
                 WHERE {UNFINISHED} AND id < (SELECT MAX(id) FROM versions newer
                    WHERE newer.resource_id = versions.resource_id AND newer.status IN ('pending', 'downloading'))"
                ),
                [SUPERSEDED],
            )?;
            let expired: Vec<(String, String)> = tx
                .prepare_cached(&format!(
                    "SELECT resource_id, id FROM versions WHERE {UNFINISHED}
                 AND (lease_expires_at IS NULL OR lease_expires_at <= ?1) ORDER BY id LIMIT ?2"
                ))?
                .query_map(params![clock, clamp(max as u64)], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (resource_id, id) in expired {
                hold(tx, &id, &lease, clock)?;
                if let Some(version) = load_version(tx, &resource_id, &id, now)? {
                    claimed.taken_over.push((resource_id, version));
                }
            }
            let room = max.saturating_sub(claimed.taken_over.len());
            let due: Vec<String> = tx
                .prepare_cached(&format!(
                    "SELECT id FROM resources WHERE next_check_at <= ?1
                 AND NOT EXISTS (SELECT 1 FROM versions WHERE resource_id = resources.id AND {UNFINISHED})
                 ORDER BY next_check_at LIMIT ?2"
                ))?
                .query_map(params![millis(now), clamp(room as u64)], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            for resource_id in due {
                let version = insert_pending(tx, &resource_id, &lease, now, clock)?;
                claimed.started.push((resource_id, version));
            }
            let next_check: Option<i64> = tx.query_row(
                "SELECT MIN(next_check_at) FROM resources WHERE next_check_at > ?1",
                [millis(now)],
                |row| row.get(0),
            )?;
            let next_expiry: Option<i64> = tx.query_row(
                &format!("SELECT MIN(lease_expires_at) FROM versions WHERE {UNFINISHED} AND lease_expires_at > ?1"),
                [clock],
                |row| row.get(0),
            )?;
            // A lease's end is on this clock; the schedule's on the caller's.
            let next_expiry = next_expiry.map(|expiry| millis(now).saturating_add(expiry.saturating_sub(clock)));
            claimed.next = from_millis(next_check.into_iter().chain(next_expiry).min());
            Ok(claimed)
        })
        .await
}

pub(super) async fn renew(
    index: &SqliteIndex,
    lease: &Lease,
    version_ids: Vec<String>,
) -> Result<Vec<String>, IndexError> {
    let lease = lease.clone();
    index
        .transaction(move |tx| {
            let clock = millis(Timestamp::now());
            let mut lost = Vec::new();
            let mut renew = tx.prepare_cached(&format!(
                "UPDATE versions SET lease_expires_at = ?3 WHERE id = ?1 AND lease_holder = ?2 AND {UNFINISHED}"
            ))?;
            let mut taken = tx.prepare_cached(&format!(
                "SELECT 1 FROM versions WHERE id = ?1 AND {UNFINISHED} AND lease_holder IS NOT ?2"
            ))?;
            for id in version_ids {
                if renew.execute(params![id, lease.holder, clock.saturating_add(lease.ttl_millis())])? == 0
                    && taken.exists(params![id, lease.holder])?
                {
                    lost.push(id);
                }
            }
            Ok(lost)
        })
        .await
}

pub(super) async fn lose_blob(index: &SqliteIndex, sha256: &str, now: Timestamp) -> Result<Vec<String>, IndexError> {
    let sha256 = sha256.to_owned();
    index
        .transaction(move |tx| {
            let resources: Vec<String> = tx
                .prepare_cached("SELECT DISTINCT resource_id FROM versions WHERE sha256 = ?1 AND status = 'ready'")?
                .query_map([&sha256], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            tx.execute(
                "UPDATE versions SET status = 'failed', error = ?2, pinned = 0, pinned_until = NULL
                 WHERE sha256 = ?1 AND status = 'ready'",
                params![sha256, BODY_LOST],
            )?;
            for id in &resources {
                tx.execute(
                    &format!(
                        "UPDATE resources SET next_check_at = ?2 WHERE id = ?1
                         AND NOT EXISTS (SELECT 1 FROM versions WHERE resource_id = ?1 AND {UNFINISHED})"
                    ),
                    params![id, millis(now)],
                )?;
            }
            Ok(resources)
        })
        .await
}

pub(super) async fn fetching(index: &SqliteIndex, resource_id: &str) -> Result<bool, IndexError> {
    let resource_id = resource_id.to_owned();
    index.read(move |tx| {
        Ok(tx.query_row(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM versions WHERE resource_id = ?1 AND {UNFINISHED} AND lease_expires_at > ?2)"
            ),
            params![resource_id, millis(Timestamp::now())],
            |row| row.get(0),
        )?)
    })
    .await
}

pub(super) async fn set_downloading(index: &SqliteIndex, version_id: &str) -> Result<(), IndexError> {
    let version_id = version_id.to_owned();
    index
        .transaction(move |tx| {
            tx.execute(
                "UPDATE versions SET status = 'downloading' WHERE id = ?1",
                [&version_id],
            )?;
            Ok(())
        })
        .await
}

pub(super) async fn finish(
    index: &SqliteIndex,
    resource_id: &str,
    version_id: &str,
    finish: Finish,
    lease: &Lease,
    now: Timestamp,
    protected: Vec<String>,
) -> Result<Vec<String>, IndexError> {
    let (resource_id, version_id, holder) = (resource_id.to_owned(), version_id.to_owned(), lease.holder.clone());
    index
        .transaction(move |tx| {
            let recorded_holder: Option<Option<String>> = tx
                .query_row(
                    "SELECT lease_holder FROM versions WHERE id = ?1",
                    [&version_id],
                    |row| row.get(0),
                )
                .optional()?;
            if recorded_holder.is_some_and(|recorded| recorded.as_deref() != Some(holder.as_str())) {
                return Err(IndexError::LeaseLost);
            }
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM resources WHERE id = ?1)",
                [&resource_id],
                |row| row.get(0),
            )?;
            if !exists {
                // Deleted while fetching: the fetch's blob may be an orphan.
                return match finish {
                    Finish::Ready(version) => unreferenced(tx, version.sha256.into_iter().collect()),
                    _ => Ok(Vec::new()),
                };
            }
            record_version(tx, &resource_id, &version_id, &finish, now)?;
            let failed = record_attempt(tx, &resource_id, &finish, now)?;
            reschedule(tx, &resource_id, now, failed)?;
            let mut orphans = enforce_limits(tx, &resource_id, now, &protected)?;
            if let Finish::Ready(version) = finish {
                // The new version's own blob is referenced: never an orphan.
                orphans.retain(|sha| Some(sha) != version.sha256.as_ref());
            }
            Ok(orphans)
        })
        .await
}

pub(super) async fn schedule_run_at_start(index: &SqliteIndex, now: Timestamp) -> Result<(), IndexError> {
    index.transaction(move |tx| {
        tx.execute(
            "UPDATE resources SET next_check_at = ?1
             WHERE json_extract(strategy, '$.kind') = 'cron' AND json_extract(strategy, '$.run_at_start') = 1
             AND NOT EXISTS (SELECT 1 FROM versions WHERE resource_id = resources.id AND status IN ('pending', 'downloading'))",
            [millis(now)],
        )?;
        Ok(())
    })
    .await
}

pub(super) async fn collect(
    index: &SqliteIndex,
    now: Timestamp,
    protected: Vec<String>,
) -> Result<Vec<String>, IndexError> {
    index
        .transaction(move |tx| {
            let ids: Vec<String> = tx
                .prepare_cached("SELECT id FROM resources")?
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            let mut orphans = Vec::new();
            for id in ids {
                orphans.extend(enforce_limits(tx, &id, now, &protected)?);
            }
            Ok(orphans)
        })
        .await
}

/// Records how a fetch ended on its version: ready, gone (an unchanged
/// body: the check goes on the newest version), or failed.
fn record_version(
    tx: &Connection,
    resource_id: &str,
    version_id: &str,
    finish: &Finish,
    now: Timestamp,
) -> Result<(), IndexError> {
    match finish {
        Finish::Ready(version) => {
            tx.execute(
                "UPDATE versions SET status = 'ready', fetched_at = ?2, last_checked_at = ?2, status_code = ?3,
             headers = ?4, size = ?5, sha256 = ?6, media_type = ?7, etag = ?8, last_modified = ?9, error = NULL,
             cache_tags = ?10, lease_holder = NULL, lease_expires_at = NULL
             WHERE id = ?1",
                params![
                    version_id,
                    millis(now),
                    version.status_code,
                    json(&version.headers),
                    version.size.and_then(|size| i64::try_from(size).ok()),
                    version.sha256,
                    version.media_type,
                    version.etag,
                    version.last_modified,
                    json(&version.cache_tags),
                ],
            )?;
            if let Some(sha) = &version.sha256 {
                tx.execute("DELETE FROM doomed_blobs WHERE sha256 = ?1", [sha])?;
            }
            let mut tagged =
                tx.prepare_cached("INSERT INTO cache_tags (tag, resource_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?;
            for tag in &version.cache_tags {
                tagged.execute(params![tag, resource_id])?;
            }
        }
        Finish::Unchanged {
            latest,
            etag,
            last_modified,
        } => {
            tx.execute("DELETE FROM versions WHERE id = ?1", [&version_id])?;
            tx.execute(
                "UPDATE versions SET last_checked_at = ?2, etag = COALESCE(?3, etag),
             last_modified = COALESCE(?4, last_modified) WHERE id = ?1",
                params![latest, millis(now), etag, last_modified],
            )?;
        }
        Finish::Failed { status_code, error } => {
            tx.execute(
                "UPDATE versions SET status = 'failed', status_code = ?2, error = ?3, last_checked_at = ?4,
             lease_holder = NULL, lease_expires_at = NULL WHERE id = ?1",
                params![version_id, status_code, error, millis(now)],
            )?;
        }
    }
    Ok(())
}

/// Records the attempt on the resource: its failures in a row and last
/// error. Answers the failure's status, for the schedule's backoff.
fn record_attempt(
    tx: &Connection,
    resource_id: &str,
    finish: &Finish,
    now: Timestamp,
) -> Result<Option<Option<u16>>, IndexError> {
    Ok(match finish {
        Finish::Failed { status_code, error } => {
            tx.execute(
                "UPDATE resources SET failures = failures + 1, last_error = ?2, last_attempt_at = ?3 WHERE id = ?1",
                params![resource_id, error, millis(now)],
            )?;
            Some(*status_code)
        }
        _ => {
            tx.execute(
                "UPDATE resources SET failures = 0, last_error = NULL, last_attempt_at = ?2 WHERE id = ?1",
                params![resource_id, millis(now)],
            )?;
            None
        }
    })
}
