//! Purges in SQLite: queued, claimed one at a time under a lease, settled
//! line by line, finished with their report.

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteIndex;
use crate::index::{IndexError, Lease, PurgeFilter, PurgeLine, PurgeRow, QUEUED, RUNNING, clamp, from_millis, millis};
use edgecache_versions::Page;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS purges (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    who TEXT NOT NULL,
    cause TEXT NOT NULL,
    kind TEXT NOT NULL,
    objects TEXT NOT NULL,
    targets TEXT NOT NULL,
    status TEXT NOT NULL,
    change_key TEXT UNIQUE,
    lease_holder TEXT,
    lease_expires_at INTEGER,
    finished_at INTEGER,
    report TEXT
);
CREATE INDEX IF NOT EXISTS purges_by_time ON purges (created_at);
CREATE TABLE IF NOT EXISTS purge_objects (
    purge_id TEXT NOT NULL REFERENCES purges (id) ON DELETE CASCADE,
    object TEXT NOT NULL,
    PRIMARY KEY (purge_id, object)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS purge_objects_by_object ON purge_objects (object);
CREATE TABLE IF NOT EXISTS purge_lines (
    purge_id TEXT NOT NULL REFERENCES purges (id) ON DELETE CASCADE,
    target TEXT NOT NULL,
    object TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL,
    carrier TEXT,
    PRIMARY KEY (purge_id, target, object)
) WITHOUT ROWID;
";

const COLUMNS: &str = "id, created_at, who, cause, kind, objects, targets, status, finished_at, report";

fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PurgeRow> {
    Ok(PurgeRow {
        id: row.get(0)?,
        created_at: from_millis(row.get(1)?).unwrap_or_default(),
        who: row.get(2)?,
        cause: row.get(3)?,
        kind: row.get(4)?,
        objects: row.get(5)?,
        targets: row.get(6)?,
        status: row.get(7)?,
        finished_at: from_millis(row.get(8)?),
        report: row.get(9)?,
    })
}

fn lines(connection: &Connection, id: &str) -> Result<Vec<PurgeLine>, IndexError> {
    Ok(connection
        .prepare_cached(
            "SELECT target, object, status, detail, carrier FROM purge_lines WHERE purge_id = ?1 ORDER BY target, object",
        )?
        .query_map([id], |row| {
            Ok(PurgeLine {
                target: row.get(0)?,
                object: row.get(1)?,
                status: row.get(2)?,
                detail: row.get(3)?,
                carrier: row.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}

fn write_lines(connection: &Connection, id: &str, lines: &[PurgeLine]) -> Result<(), IndexError> {
    let mut insert = connection.prepare_cached(
        "INSERT INTO purge_lines (purge_id, target, object, status, detail, carrier) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (purge_id, target, object) DO UPDATE SET status = excluded.status, detail = excluded.detail, carrier = excluded.carrier",
    )?;
    for line in lines {
        insert.execute(params![
            id,
            line.target,
            line.object,
            line.status,
            line.detail,
            line.carrier
        ])?;
    }
    Ok(())
}

pub(super) async fn add(
    index: &SqliteIndex,
    purge: PurgeRow,
    objects: Vec<String>,
    change_key: Option<String>,
) -> Result<bool, IndexError> {
    index
        .transaction(move |tx| {
            let added = tx.execute(
                "INSERT INTO purges (id, created_at, who, cause, kind, objects, targets, status, change_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (change_key) DO NOTHING",
                params![
                    purge.id,
                    millis(purge.created_at),
                    purge.who,
                    purge.cause,
                    purge.kind,
                    purge.objects,
                    purge.targets,
                    QUEUED,
                    change_key
                ],
            )?;
            let mut insert =
                tx.prepare_cached("INSERT OR IGNORE INTO purge_objects (purge_id, object) VALUES (?1, ?2)")?;
            if added > 0 {
                for object in &objects {
                    insert.execute(params![purge.id, object])?;
                }
            }
            Ok(added > 0)
        })
        .await
}

pub(super) async fn claim(
    index: &SqliteIndex,
    lease: &Lease,
    now: Timestamp,
) -> Result<Option<(PurgeRow, Vec<PurgeLine>)>, IndexError> {
    let (holder, expires) = (lease.holder.clone(), millis(now).saturating_add(lease.ttl_millis()));
    let now = millis(now);
    index
        .transaction(move |tx| {
            let busy: Option<String> = tx
                .query_row(
                    "SELECT id FROM purges WHERE status = ?1 AND lease_expires_at > ?2 LIMIT 1",
                    params![RUNNING, now],
                    |row| row.get(0),
                )
                .optional()?;
            if busy.is_some() {
                return Ok(None);
            }
            let next: Option<String> = tx
                .query_row(
                    "SELECT id FROM purges WHERE status = ?1 OR status = ?2 ORDER BY status = ?2, created_at, id LIMIT 1",
                    params![RUNNING, QUEUED],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(id) = next else { return Ok(None) };
            tx.execute(
                "UPDATE purges SET status = ?2, lease_holder = ?3, lease_expires_at = ?4 WHERE id = ?1",
                params![id, RUNNING, holder, expires],
            )?;
            let purge = tx.query_row(&format!("SELECT {COLUMNS} FROM purges WHERE id = ?1"), [&id], row)?;
            let settled = lines(tx, &id)?;
            Ok(Some((purge, settled)))
        })
        .await
}

pub(super) async fn settle(
    index: &SqliteIndex,
    id: &str,
    lease: &Lease,
    settled: Vec<PurgeLine>,
) -> Result<bool, IndexError> {
    let (id, holder, ttl) = (id.to_owned(), lease.holder.clone(), lease.ttl_millis());
    let now = millis(Timestamp::now());
    index
        .transaction(move |tx| {
            let renewed = tx.execute(
                "UPDATE purges SET lease_expires_at = ?3 WHERE id = ?1 AND lease_holder = ?2 AND status = ?4",
                params![id, holder, now.saturating_add(ttl), RUNNING],
            )?;
            if renewed == 0 {
                return Ok(false);
            }
            write_lines(tx, &id, &settled)?;
            Ok(true)
        })
        .await
}

pub(super) async fn finish(
    index: &SqliteIndex,
    id: &str,
    lease: &Lease,
    status: &str,
    report: String,
    final_lines: Vec<PurgeLine>,
    now: Timestamp,
) -> Result<(), IndexError> {
    let (id, holder, status) = (id.to_owned(), lease.holder.clone(), status.to_owned());
    let now = millis(now);
    index
        .transaction(move |tx| {
            let held = tx.execute(
                "UPDATE purges SET status = ?3, report = ?4, finished_at = ?5, lease_holder = NULL, lease_expires_at = NULL
                 WHERE id = ?1 AND lease_holder = ?2",
                params![id, holder, status, report, now],
            )?;
            if held > 0 {
                write_lines(tx, &id, &final_lines)?;
            }
            Ok(())
        })
        .await
}

pub(super) async fn list(
    index: &SqliteIndex,
    filter: PurgeFilter,
    skip: u64,
    limit: u64,
) -> Result<Page<(PurgeRow, Vec<PurgeLine>)>, IndexError> {
    index
        .read(move |connection| {
            let mut conditions = vec!["1 = 1".to_owned()];
            let mut values: Vec<rusqlite::types::Value> = Vec::new();
            let mut bind = |value: rusqlite::types::Value| {
                values.push(value);
                format!("?{}", values.len())
            };
            if let Some(object) = filter.object {
                let at = bind(object.into());
                conditions.push(format!(
                    "EXISTS (SELECT 1 FROM purge_objects o WHERE o.purge_id = p.id AND o.object = {at})"
                ));
            }
            if let Some(target) = filter.target {
                let at = bind(target.into());
                conditions.push(format!(
                    "EXISTS (SELECT 1 FROM purge_lines l WHERE l.purge_id = p.id AND l.target = {at})"
                ));
            }
            if let Some(outcome) = filter.outcome {
                let at = bind(outcome.into());
                conditions.push(format!(
                    "EXISTS (SELECT 1 FROM purge_lines l WHERE l.purge_id = p.id AND l.status = {at})"
                ));
            }
            if let Some(since) = filter.since {
                let at = bind(millis(since).into());
                conditions.push(format!("p.created_at >= {at}"));
            }
            if let Some(until) = filter.until {
                let at = bind(millis(until).into());
                conditions.push(format!("p.created_at < {at}"));
            }
            let condition = conditions.join(" AND ");
            let total: i64 = connection.query_row(
                &format!("SELECT count(*) FROM purges p WHERE {condition}"),
                rusqlite::params_from_iter(values.iter()),
                |row| row.get(0),
            )?;
            let (skip_at, limit_at) = (values.len() + 1, values.len() + 2);
            values.push(clamp(skip).into());
            values.push(clamp(limit).into());
            let rows: Vec<PurgeRow> = connection
                .prepare(&format!(
                    "SELECT {} FROM purges p WHERE {condition} ORDER BY p.created_at DESC, p.id DESC LIMIT ?{limit_at} OFFSET ?{skip_at}",
                    COLUMNS.split(", ").map(|column| format!("p.{column}")).collect::<Vec<_>>().join(", ")
                ))?
                .query_map(rusqlite::params_from_iter(values.iter()), row)?
                .collect::<Result<_, _>>()?;
            // In-process, in the same read: a query per purge costs no round trip.
            let mut items = Vec::with_capacity(rows.len());
            for purge in rows {
                let settled = lines(connection, &purge.id)?;
                items.push((purge, settled));
            }
            Ok(Page {
                items,
                total: u64::try_from(total).unwrap_or_default(),
            })
        })
        .await
}

pub(super) async fn one(index: &SqliteIndex, id: &str) -> Result<Option<(PurgeRow, Vec<PurgeLine>)>, IndexError> {
    let id = id.to_owned();
    index
        .read(move |connection| {
            let Some(purge) = connection
                .query_row(&format!("SELECT {COLUMNS} FROM purges WHERE id = ?1"), [&id], row)
                .optional()?
            else {
                return Ok(None);
            };
            let settled = lines(connection, &id)?;
            Ok(Some((purge, settled)))
        })
        .await
}

pub(super) async fn forget(index: &SqliteIndex, before: Timestamp) -> Result<u64, IndexError> {
    let before = millis(before);
    index
        .transaction(move |tx| {
            let deleted = tx.execute(
                "DELETE FROM purges WHERE finished_at IS NOT NULL AND finished_at < ?1",
                [before],
            )?;
            Ok(deleted as u64)
        })
        .await
}
