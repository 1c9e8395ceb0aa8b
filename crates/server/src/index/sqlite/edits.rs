//! Changes users make: registrations, updates, deletes, pins and tags; and
//! the bookkeeping of blobs to delete.
use super::*;

pub(super) async fn key_secret(index: &SqliteIndex) -> Result<Vec<u8>, IndexError> {
    index
        .transaction(|tx| {
            let existing: Option<Vec<u8>> = tx
                .query_row("SELECT value FROM meta WHERE name = 'key_secret'", [], |row| row.get(0))
                .optional()?;
            if let Some(secret) = existing {
                return Ok(secret);
            }
            let secret = edgecache_base::digest::random_bytes().to_vec();
            tx.execute("INSERT INTO meta (name, value) VALUES ('key_secret', ?1)", [&secret])?;
            Ok(secret)
        })
        .await
}

pub(super) async fn register(
    index: &SqliteIndex,
    key: String,
    resource: Resource,
) -> Result<(Resource, bool), IndexError> {
    index.transaction(move |tx| {
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO resources (id, key, grp, method, url, query, headers, body, strategy, limits, created_at, next_check_at, description, link, purge_on_change)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, NULL, ?12, ?13, ?14)",
            params![
                resource.id,
                key,
                resource.group,
                resource.method,
                resource.url,
                json(&resource.query),
                json(&resource.headers),
                resource.body.as_ref().map(json),
                json(&resource.strategy),
                json(&resource.limits),
                millis(resource.created_at),
                resource.description,
                resource.link,
                resource.purge_on_change,
            ],
        )? == 1;
        let id: String = tx.query_row(
            "SELECT id FROM resources WHERE key = ?1 AND grp = ?2",
            params![key, resource.group],
            |row| row.get(0),
        )?;
        let stored = load_resource(tx, &id)?.ok_or(IndexError::Corrupt {
            what: "resource",
            detail: "vanished during registration".into(),
        })?;
        Ok((stored, inserted))
    })
    .await
}

pub(super) async fn update(
    index: &SqliteIndex,
    id: &str,
    strategy: Strategy,
    limits: Limits,
    purge_on_change: bool,
    now: Timestamp,
) -> Result<Option<Resource>, IndexError> {
    let id = id.to_owned();
    index
        .transaction(move |tx| {
            let Some(current) = load_resource(tx, &id)? else {
                return Ok(None);
            };
            let in_flight: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM versions WHERE resource_id = ?1 AND status IN ('pending', 'downloading'))",
            [&id],
            |row| row.get(0),
        )?;
            // A fetch under way reschedules when it ends, with the new strategy.
            let next = if in_flight {
                None
            } else {
                schedule::next_check_from(&strategy, current.last_checked_at, now)
            };
            tx.execute(
                "UPDATE resources SET strategy = ?2, limits = ?3, next_check_at = ?4, purge_on_change = ?5 WHERE id = ?1",
                params![id, json(&strategy), json(&limits), next.map(millis), purge_on_change],
            )?;
            load_resource(tx, &id)
        })
        .await
}

pub(super) async fn delete(
    index: &SqliteIndex,
    id: &str,
    force: bool,
    now: Timestamp,
) -> Result<DeleteOutcome, IndexError> {
    let id = id.to_owned();
    index
        .transaction(move |tx| {
            if load_resource(tx, &id)?.is_none() {
                return Ok(DeleteOutcome::NotFound);
            }
            let pinned: i64 = tx.query_row(
                &format!("SELECT COUNT(*) FROM versions WHERE resource_id = ?1 AND {PINNED_NOW}"),
                params![id, millis(now)],
                |row| row.get(0),
            )?;
            if pinned > 0 && !force {
                return Ok(DeleteOutcome::Pinned(u64::try_from(pinned).unwrap_or_default()));
            }
            let shas: Vec<String> = tx
                .prepare_cached("SELECT sha256 FROM versions WHERE resource_id = ?1 AND sha256 IS NOT NULL")?
                .query_map([&id], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            tx.execute("DELETE FROM versions WHERE resource_id = ?1", [&id])?;
            tx.execute("DELETE FROM resources WHERE id = ?1", [&id])?;
            Ok(DeleteOutcome::Deleted(unreferenced(tx, shas)?))
        })
        .await
}

pub(super) async fn pin(
    index: &SqliteIndex,
    resource_id: &str,
    version_id: &str,
    until: Option<Timestamp>,
    now: Timestamp,
) -> Result<PinOutcome, IndexError> {
    let (resource_id, version_id) = (resource_id.to_owned(), version_id.to_owned());
    index
        .transaction(move |tx| {
            let Some(version) = load_version(tx, &resource_id, &version_id, now)? else {
                return Ok(PinOutcome::NotFound);
            };
            if version.status != VersionStatus::Ready {
                return Ok(PinOutcome::NotReady);
            }
            let limits: String = tx.query_row("SELECT limits FROM resources WHERE id = ?1", [&resource_id], |row| {
                row.get(0)
            })?;
            let limits: Limits = parse("resource limits", &limits)?;
            let others: u32 = tx.query_row(
                &format!("SELECT COUNT(*) FROM versions WHERE resource_id = ?1 AND {PINNED_NOW} AND id != ?3"),
                params![resource_id, millis(now), version.id],
                |row| row.get(0),
            )?;
            if others >= limits.max_pinned {
                return Ok(PinOutcome::LimitReached(limits.max_pinned));
            }
            tx.execute(
                "UPDATE versions SET pinned = 1, pinned_until = ?2 WHERE id = ?1",
                params![version.id, until.map(millis)],
            )?;
            let pinned = load_version(tx, &resource_id, &version.id, now)?;
            Ok(pinned.map_or(PinOutcome::NotFound, |version| PinOutcome::Pinned(Box::new(version))))
        })
        .await
}

pub(super) async fn unpin(
    index: &SqliteIndex,
    resource_id: &str,
    version_id: &str,
    now: Timestamp,
) -> Result<Option<Version>, IndexError> {
    let (resource_id, version_id) = (resource_id.to_owned(), version_id.to_owned());
    index
        .transaction(move |tx| {
            let Some(version) = load_version(tx, &resource_id, &version_id, now)? else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE versions SET pinned = 0, pinned_until = NULL WHERE id = ?1",
                [&version.id],
            )?;
            // Unpinned, it may be one over the limit; the next collection
            // (after a fetch, or the periodic one) removes the oldest.
            load_version(tx, &resource_id, &version.id, now)
        })
        .await
}

pub(super) async fn tag(
    index: &SqliteIndex,
    resource_id: &str,
    version_id: &str,
    tag: &str,
    add: bool,
    now: Timestamp,
) -> Result<Option<Version>, IndexError> {
    let (resource_id, version_id, tag) = (resource_id.to_owned(), version_id.to_owned(), tag.to_owned());
    index
        .transaction(move |tx| {
            let Some(mut version) = load_version(tx, &resource_id, &version_id, now)? else {
                return Ok(None);
            };
            // Removing a tag the version lacks is a no-op, not an error.
            version.tags.retain(|existing| existing != &tag);
            if add {
                version.tags.push(tag);
                version.tags.sort();
            }
            tx.execute(
                "UPDATE versions SET tags = ?2 WHERE id = ?1",
                params![version.id, json(&version.tags)],
            )?;
            Ok(Some(version))
        })
        .await
}

pub(super) async fn doom_blobs(index: &SqliteIndex, shas: Vec<String>, now: Timestamp) -> Result<(), IndexError> {
    index
        .transaction(move |tx| {
            let mut statement =
                tx.prepare_cached("INSERT INTO doomed_blobs (sha256, since) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?;
            for sha in shas {
                statement.execute(params![sha, millis(now)])?;
            }
            Ok(())
        })
        .await
}

pub(super) async fn take_doomed(index: &SqliteIndex, before: Timestamp) -> Result<Vec<String>, IndexError> {
    index
        .transaction(move |tx| {
            let doomed: Vec<String> = tx
                .prepare_cached("SELECT sha256 FROM doomed_blobs WHERE since <= ?1")?
                .query_map([millis(before)], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            for sha in &doomed {
                tx.execute("DELETE FROM doomed_blobs WHERE sha256 = ?1", [sha])?;
            }
            unreferenced(tx, doomed)
        })
        .await
}
