//! Changes users make: registrations, updates, deletes, pins and tags; and
//! the bookkeeping of blobs to delete.
use super::*;

pub(super) async fn key_secret(index: &PgIndex) -> Result<Vec<u8>, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    // Replicas starting together agree on one secret: the first insert wins.
    tx.execute(
        "INSERT INTO meta (name, value) VALUES ('key_secret', $1) ON CONFLICT (name) DO NOTHING",
        &[&edgecache_base::digest::random_bytes().to_vec()],
    )
    .await?;
    let secret: Vec<u8> = tx
        .query_one("SELECT value FROM meta WHERE name = 'key_secret'", &[])
        .await?
        .try_get(0)?;
    tx.commit().await?;
    Ok(secret)
}

pub(super) async fn register(index: &PgIndex, key: String, resource: Resource) -> Result<(Resource, bool), IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    let inserted = tx
        .execute(
            "INSERT INTO resources (id, key, grp, method, url, query, headers, body, strategy, limits, created_at, next_check_at, description, link, purge_on_change)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, $12, $13, $14) ON CONFLICT (key, grp) DO NOTHING",
            &[
                &resource.id,
                &key,
                &resource.group,
                &resource.method,
                &resource.url,
                &json(&resource.query),
                &json(&resource.headers),
                &resource.body.as_ref().map(json),
                &json(&resource.strategy),
                &json(&resource.limits),
                &millis(resource.created_at),
                &resource.description,
                &resource.link,
                &resource.purge_on_change,
            ],
        )
        .await?
        == 1;
    let id: String = tx
        .query_one(
            "SELECT id FROM resources WHERE key = $1 AND grp = $2",
            &[&key, &resource.group],
        )
        .await?
        .try_get(0)?;
    let stored = load_resource(&tx, &id).await?.ok_or(IndexError::Corrupt {
        what: "resource",
        detail: "vanished during registration".into(),
    })?;
    if inserted {
        notify(&tx).await?;
    }
    tx.commit().await?;
    Ok((stored, inserted))
}

pub(super) async fn update(
    index: &PgIndex,
    id: &str,
    strategy: Strategy,
    limits: Limits,
    purge_on_change: bool,
    now: Timestamp,
) -> Result<Option<Resource>, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    if !lock_resource(&tx, id).await? {
        return Ok(None);
    }
    let Some(current) = load_resource(&tx, id).await? else {
        return Ok(None);
    };
    let in_flight: bool = tx
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM versions WHERE resource_id = $1 AND {UNFINISHED})"),
            &[&id],
        )
        .await?
        .try_get(0)?;
    // A fetch under way reschedules when it ends, with the new strategy.
    let next = if in_flight {
        None
    } else {
        schedule::next_check_from(&strategy, current.last_checked_at, now)
    };
    tx.execute(
        "UPDATE resources SET strategy = $2, limits = $3, next_check_at = $4, purge_on_change = $5 WHERE id = $1",
        &[
            &id,
            &json(&strategy),
            &json(&limits),
            &next.map(millis),
            &purge_on_change,
        ],
    )
    .await?;
    let updated = load_resource(&tx, id).await?;
    notify(&tx).await?;
    tx.commit().await?;
    Ok(updated)
}

pub(super) async fn delete(
    index: &PgIndex,
    id: &str,
    force: bool,
    now: Timestamp,
) -> Result<DeleteOutcome, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    if !lock_resource(&tx, id).await? {
        return Ok(DeleteOutcome::NotFound);
    }
    let pinned = count(
        &tx.query_one(
            &format!("SELECT COUNT(*) FROM versions WHERE resource_id = $1 AND {PINNED_NOW}"),
            &[&id, &millis(now)],
        )
        .await?,
    )?;
    if pinned > 0 && !force {
        return Ok(DeleteOutcome::Pinned(pinned));
    }
    let shas: Vec<String> = tx
        .query(
            "SELECT sha256 FROM versions WHERE resource_id = $1 AND sha256 IS NOT NULL",
            &[&id],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    tx.execute("DELETE FROM versions WHERE resource_id = $1", &[&id])
        .await?;
    tx.execute("DELETE FROM resources WHERE id = $1", &[&id]).await?;
    let orphans = unreferenced(&tx, shas).await?;
    notify(&tx).await?;
    tx.commit().await?;
    Ok(DeleteOutcome::Deleted(orphans))
}

pub(super) async fn pin(
    index: &PgIndex,
    resource_id: &str,
    version_id: &str,
    until: Option<Timestamp>,
    now: Timestamp,
) -> Result<PinOutcome, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    // Concurrent pins on two replicas count each other.
    if !lock_resource(&tx, resource_id).await? {
        return Ok(PinOutcome::NotFound);
    }
    let Some(version) = load_version(&tx, resource_id, version_id, now).await? else {
        return Ok(PinOutcome::NotFound);
    };
    if version.status != VersionStatus::Ready {
        return Ok(PinOutcome::NotReady);
    }
    let limits: Limits = parse(
        "resource limits",
        tx.query_one("SELECT limits FROM resources WHERE id = $1", &[&resource_id])
            .await?
            .try_get(0)?,
    )?;
    let others = count(
        &tx.query_one(
            &format!("SELECT COUNT(*) FROM versions WHERE resource_id = $1 AND {PINNED_NOW} AND id != $3"),
            &[&resource_id, &millis(now), &version.id],
        )
        .await?,
    )?;
    if others >= u64::from(limits.max_pinned) {
        return Ok(PinOutcome::LimitReached(limits.max_pinned));
    }
    tx.execute(
        "UPDATE versions SET pinned = TRUE, pinned_until = $2 WHERE id = $1",
        &[&version.id, &until.map(millis)],
    )
    .await?;
    let pinned = load_version(&tx, resource_id, &version.id, now).await?;
    notify(&tx).await?;
    tx.commit().await?;
    Ok(pinned.map_or(PinOutcome::NotFound, |version| PinOutcome::Pinned(Box::new(version))))
}

pub(super) async fn unpin(
    index: &PgIndex,
    resource_id: &str,
    version_id: &str,
    now: Timestamp,
) -> Result<Option<Version>, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    let Some(version) = load_version(&tx, resource_id, version_id, now).await? else {
        return Ok(None);
    };
    tx.execute(
        "UPDATE versions SET pinned = FALSE, pinned_until = NULL WHERE id = $1",
        &[&version.id],
    )
    .await?;
    let unpinned = load_version(&tx, resource_id, &version.id, now).await?;
    notify(&tx).await?;
    tx.commit().await?;
    Ok(unpinned)
}

pub(super) async fn tag(
    index: &PgIndex,
    resource_id: &str,
    version_id: &str,
    tag: &str,
    add: bool,
    now: Timestamp,
) -> Result<Option<Version>, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    let Some(found) = load_version(&tx, resource_id, version_id, now).await? else {
        return Ok(None);
    };
    // Read again under a row lock: two replicas tagging at once both count.
    tx.execute("SELECT 1 FROM versions WHERE id = $1 FOR UPDATE", &[&found.id])
        .await?;
    let Some(mut version) = load_version(&tx, resource_id, &found.id, now).await? else {
        return Ok(None);
    };
    version.tags.retain(|existing| existing != tag);
    if add {
        version.tags.push(tag.to_owned());
        version.tags.sort();
    }
    tx.execute(
        "UPDATE versions SET tags = $2 WHERE id = $1",
        &[&version.id, &json(&version.tags)],
    )
    .await?;
    notify(&tx).await?;
    tx.commit().await?;
    Ok(Some(version))
}

pub(super) async fn doom_blobs(index: &PgIndex, shas: Vec<String>, now: Timestamp) -> Result<(), IndexError> {
    let client = index.client().await?;
    client
        .execute(
            "INSERT INTO doomed_blobs (sha256, since) SELECT unnest($1::text[]), $2 ON CONFLICT DO NOTHING",
            &[&shas, &millis(now)],
        )
        .await?;
    Ok(())
}

pub(super) async fn take_doomed(index: &PgIndex, before: Timestamp) -> Result<Vec<String>, IndexError> {
    let mut client = index.client().await?;
    let tx = client.transaction().await?;
    let doomed: Vec<String> = tx
        .query(
            "DELETE FROM doomed_blobs WHERE since <= $1 RETURNING sha256",
            &[&millis(before)],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let orphans = unreferenced(&tx, doomed).await?;
    tx.commit().await?;
    Ok(orphans)
}
