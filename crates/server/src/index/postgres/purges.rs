//! Purges in PostgreSQL: as in SQLite, with the claim serialized across
//! replicas by an advisory lock and leases timed by the database's clock.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use jiff::Timestamp;
use tokio_postgres::types::ToSql;

use super::{DB_MILLIS, PgIndex, rows::notify};
use crate::index::{IndexError, Lease, PurgeFilter, PurgeLine, PurgeRow, QUEUED, RUNNING, clamp, from_millis, millis};
use edgecache_versions::Page;

/// Advisory lock key: one claim of a purge at a time, across replicas.
const PURGE_CLAIM_LOCK: i64 = 0x6564_6765_0004;

pub(super) const MIGRATION: &str = "
CREATE TABLE purges (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    who TEXT NOT NULL,
    cause TEXT NOT NULL,
    kind TEXT NOT NULL,
    objects TEXT NOT NULL,
    targets TEXT NOT NULL,
    status TEXT NOT NULL,
    change_key TEXT UNIQUE,
    lease_holder TEXT,
    lease_expires_at BIGINT,
    finished_at BIGINT,
    report TEXT
);
CREATE INDEX purges_by_time ON purges (created_at);
CREATE TABLE purge_objects (
    purge_id TEXT NOT NULL REFERENCES purges (id) ON DELETE CASCADE,
    object TEXT NOT NULL,
    PRIMARY KEY (purge_id, object)
);
CREATE INDEX purge_objects_by_object ON purge_objects (object);
CREATE TABLE purge_lines (
    purge_id TEXT NOT NULL REFERENCES purges (id) ON DELETE CASCADE,
    target TEXT NOT NULL,
    object TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL,
    carrier TEXT,
    PRIMARY KEY (purge_id, target, object)
);
";

const COLUMNS: &str =
    "p.id, p.created_at, p.who, p.cause, p.kind, p.objects, p.targets, p.status, p.finished_at, p.report";

fn row(row: &tokio_postgres::Row) -> Result<PurgeRow, IndexError> {
    Ok(PurgeRow {
        id: row.try_get(0)?,
        created_at: from_millis(row.try_get(1)?).unwrap_or_default(),
        who: row.try_get(2)?,
        cause: row.try_get(3)?,
        kind: row.try_get(4)?,
        objects: row.try_get(5)?,
        targets: row.try_get(6)?,
        status: row.try_get(7)?,
        finished_at: from_millis(row.try_get(8)?),
        report: row.try_get(9)?,
    })
}

async fn lines(client: &impl GenericClient, id: &str) -> Result<Vec<PurgeLine>, IndexError> {
    client
        .query(
            "SELECT target, object, status, detail, carrier FROM purge_lines WHERE purge_id = $1 ORDER BY target, object",
            &[&id],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(PurgeLine {
                target: row.try_get(0)?,
                object: row.try_get(1)?,
                status: row.try_get(2)?,
                detail: row.try_get(3)?,
                carrier: row.try_get(4)?,
            })
        })
        .collect()
}

async fn write_lines(client: &impl GenericClient, id: &str, lines: &[PurgeLine]) -> Result<(), IndexError> {
    for line in lines {
        client
            .execute(
                "INSERT INTO purge_lines (purge_id, target, object, status, detail, carrier) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (purge_id, target, object) DO UPDATE SET status = excluded.status, detail = excluded.detail, carrier = excluded.carrier",
                &[&id, &line.target, &line.object, &line.status, &line.detail, &line.carrier],
            )
            .await?;
    }
    Ok(())
}

pub(super) async fn add(
    index: &PgIndex,
    purge: PurgeRow,
    objects: Vec<String>,
    change_key: Option<String>,
) -> Result<bool, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    let added = tx
        .execute(
            "INSERT INTO purges (id, created_at, who, cause, kind, objects, targets, status, change_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (change_key) DO NOTHING",
            &[
                &purge.id,
                &millis(purge.created_at),
                &purge.who,
                &purge.cause,
                &purge.kind,
                &purge.objects,
                &purge.targets,
                &QUEUED,
                &change_key,
            ],
        )
        .await?;
    if added > 0 {
        for object in &objects {
            tx.execute(
                "INSERT INTO purge_objects (purge_id, object) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&purge.id, object],
            )
            .await?;
        }
        notify(&tx).await?;
    }
    tx.commit().await?;
    Ok(added > 0)
}

pub(super) async fn claim(index: &PgIndex, lease: &Lease) -> Result<Option<(PurgeRow, Vec<PurgeLine>)>, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PURGE_CLAIM_LOCK])
        .await?;
    let busy = tx
        .query_opt(
            &format!("SELECT id FROM purges WHERE status = $1 AND lease_expires_at > {DB_MILLIS} LIMIT 1"),
            &[&RUNNING],
        )
        .await?;
    if busy.is_some() {
        return Ok(None);
    }
    let next = tx
        .query_opt(
            "SELECT id FROM purges WHERE status = $1 OR status = $2 ORDER BY status = $2, created_at, id LIMIT 1",
            &[&RUNNING, &QUEUED],
        )
        .await?;
    let Some(next) = next else { return Ok(None) };
    let id: String = next.try_get(0)?;
    tx.execute(
        &format!("UPDATE purges SET status = $2, lease_holder = $3, lease_expires_at = {DB_MILLIS} + $4 WHERE id = $1"),
        &[&id, &RUNNING, &lease.holder, &lease.ttl_millis()],
    )
    .await?;
    let purge = row(&tx
        .query_one(&format!("SELECT {COLUMNS} FROM purges p WHERE p.id = $1"), &[&id])
        .await?)?;
    let settled = lines(&tx, &id).await?;
    tx.commit().await?;
    Ok(Some((purge, settled)))
}

pub(super) async fn settle(
    index: &PgIndex,
    id: &str,
    lease: &Lease,
    settled: Vec<PurgeLine>,
) -> Result<bool, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    let renewed = tx
        .execute(
            &format!(
                "UPDATE purges SET lease_expires_at = {DB_MILLIS} + $3 WHERE id = $1 AND lease_holder = $2 AND status = $4"
            ),
            &[&id, &lease.holder, &lease.ttl_millis(), &RUNNING],
        )
        .await?;
    if renewed == 0 {
        return Ok(false);
    }
    write_lines(&tx, id, &settled).await?;
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn finish(
    index: &PgIndex,
    id: &str,
    lease: &Lease,
    status: &str,
    report: String,
    final_lines: Vec<PurgeLine>,
    now: Timestamp,
) -> Result<(), IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    let held = tx
        .execute(
            "UPDATE purges SET status = $3, report = $4, finished_at = $5, lease_holder = NULL, lease_expires_at = NULL
             WHERE id = $1 AND lease_holder = $2",
            &[&id, &lease.holder, &status, &report, &millis(now)],
        )
        .await?;
    if held > 0 {
        write_lines(&tx, id, &final_lines).await?;
        notify(&tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list(
    index: &PgIndex,
    filter: PurgeFilter,
    skip: u64,
    limit: u64,
) -> Result<Page<(PurgeRow, Vec<PurgeLine>)>, IndexError> {
    let client = index.client().await?;
    let mut conditions = vec!["TRUE".to_owned()];
    let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut bind = |value: Box<dyn ToSql + Sync + Send>| {
        values.push(value);
        format!("${}", values.len())
    };
    if let Some(object) = filter.object {
        let at = bind(Box::new(object));
        conditions.push(format!(
            "EXISTS (SELECT 1 FROM purge_objects o WHERE o.purge_id = p.id AND o.object = {at})"
        ));
    }
    if let Some(target) = filter.target {
        let at = bind(Box::new(target));
        conditions.push(format!(
            "EXISTS (SELECT 1 FROM purge_lines l WHERE l.purge_id = p.id AND l.target = {at})"
        ));
    }
    if let Some(outcome) = filter.outcome {
        let at = bind(Box::new(outcome));
        conditions.push(format!(
            "EXISTS (SELECT 1 FROM purge_lines l WHERE l.purge_id = p.id AND l.status = {at})"
        ));
    }
    if let Some(since) = filter.since {
        let at = bind(Box::new(millis(since)));
        conditions.push(format!("p.created_at >= {at}"));
    }
    if let Some(until) = filter.until {
        let at = bind(Box::new(millis(until)));
        conditions.push(format!("p.created_at < {at}"));
    }
    let condition = conditions.join(" AND ");
    let parameters: Vec<&(dyn ToSql + Sync)> = values
        .iter()
        .map(|value| value.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let total: i64 = client
        .query_one(&format!("SELECT count(*) FROM purges p WHERE {condition}"), &parameters)
        .await?
        .try_get(0)?;
    let (skip, limit) = (clamp(skip), clamp(limit));
    let mut paged = parameters.clone();
    paged.push(&skip);
    paged.push(&limit);
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM purges p WHERE {condition} ORDER BY p.created_at DESC, p.id DESC LIMIT ${} OFFSET ${}",
                parameters.len() + 2,
                parameters.len() + 1
            ),
            &paged,
        )
        .await?;
    let purges: Vec<PurgeRow> = rows.iter().map(row).collect::<Result<_, _>>()?;
    // Every listed purge's lines in one round trip.
    let ids: Vec<&str> = purges.iter().map(|purge| purge.id.as_str()).collect();
    let mut settled: HashMap<String, Vec<PurgeLine>> = HashMap::new();
    for found in client
        .query(
            "SELECT purge_id, target, object, status, detail, carrier FROM purge_lines
             WHERE purge_id = ANY($1) ORDER BY purge_id, target, object",
            &[&ids],
        )
        .await?
    {
        settled.entry(found.try_get(0)?).or_default().push(PurgeLine {
            target: found.try_get(1)?,
            object: found.try_get(2)?,
            status: found.try_get(3)?,
            detail: found.try_get(4)?,
            carrier: found.try_get(5)?,
        });
    }
    Ok(Page {
        items: purges
            .into_iter()
            .map(|purge| {
                let lines = settled.remove(&purge.id).unwrap_or_default();
                (purge, lines)
            })
            .collect(),
        total: u64::try_from(total).unwrap_or_default(),
    })
}

pub(super) async fn one(index: &PgIndex, id: &str) -> Result<Option<(PurgeRow, Vec<PurgeLine>)>, IndexError> {
    let client = index.client().await?;
    let Some(found) = client
        .query_opt(&format!("SELECT {COLUMNS} FROM purges p WHERE p.id = $1"), &[&id])
        .await?
    else {
        return Ok(None);
    };
    let purge = row(&found)?;
    let settled = lines(&client, id).await?;
    Ok(Some((purge, settled)))
}

pub(super) async fn forget(index: &PgIndex, before: Timestamp) -> Result<u64, IndexError> {
    let client = index.client().await?;
    Ok(client
        .execute(
            "DELETE FROM purges WHERE finished_at IS NOT NULL AND finished_at < $1",
            &[&millis(before)],
        )
        .await?)
}
