//! The registry on PostgreSQL (migration 11): `outpost_registry` (one row per version, with the
//! artifact's sha256 beside the record so a purge can ask whether another version still names
//! it), `outpost_registry_policies`, and `outpost_blobs` (each artifact in 1 MiB chunks).

use super::{ModelChange, RegistryError, VersionRecord, decode};
use crate::base::pg::store::PgStore;
use crate::base::store::{StoreError, encode};

/// Bytes per stored chunk of an artifact.
pub(crate) const CHUNK: usize = 1024 * 1024;

pub(super) fn get(store: &PgStore, name: &str, version: &str) -> Result<Option<String>, StoreError> {
    store.with(|c| {
        c.query_opt(
            "SELECT record::text FROM outpost_registry WHERE name = $1 AND version = $2",
            &[&name, &version],
        )?
        .map(|row| row.try_get(0))
        .transpose()
    })
}

/// Every version as (`name@version`, record text).
pub(super) fn list(store: &PgStore) -> Result<Vec<(String, String)>, StoreError> {
    store.keyed_texts(
        "SELECT name || '@' || version, record::text FROM outpost_registry ORDER BY name, version",
        &[],
    )
}

/// `false` when the version is stored already.
pub(super) fn insert_new(store: &PgStore, record: &VersionRecord, value: &[u8]) -> Result<bool, StoreError> {
    let text = String::from_utf8_lossy(value).into_owned();
    store.with(|c| {
        let stored = c.execute(
            "INSERT INTO outpost_registry (name, version, bundle_sha256, record) VALUES ($1, $2, $3, $4::text::json)
             ON CONFLICT (name, version) DO NOTHING",
            &[&record.name, &record.version, &record.bundle_sha256, &text],
        )?;
        Ok(stored == 1)
    })
}

/// Locks every version of `name` (`FOR UPDATE`, in version order), runs `change` and writes back
/// what it changed, in one transaction.
pub(super) fn change_model(
    store: &PgStore,
    name: &str,
    change: ModelChange<'_>,
) -> Result<Vec<VersionRecord>, RegistryError> {
    store
        .transaction(|tx| {
            let rows = tx.query(
                "SELECT version, record::text FROM outpost_registry WHERE name = $1 ORDER BY version FOR UPDATE",
                &[&name],
            )?;
            let mut versions = Vec::with_capacity(rows.len());
            for row in rows {
                let (version, text): (String, String) = (row.try_get(0)?, row.try_get(1)?);
                match decode(&format!("{name}@{version}"), text.as_bytes()) {
                    Ok(record) => versions.push(record),
                    Err(e) => return Ok(Err(e)),
                }
            }
            versions.sort_by(|a, b| super::super::semver_cmp(&a.version, &b.version));
            let changed = match change(&mut versions) {
                Ok(changed) => changed,
                Err(refused) => return Ok(Err(refused)),
            };
            for &i in &changed {
                let r = &versions[i];
                let text = match encode(&format!("registry/{}", r.id()), r) {
                    Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    Err(e) => return Ok(Err(e.into())),
                };
                tx.execute(
                    "UPDATE outpost_registry SET record = $3::text::json WHERE name = $1 AND version = $2",
                    &[&r.name, &r.version, &text],
                )?;
            }
            Ok(Ok(versions))
        })
        .map_err(RegistryError::from)?
}

pub(super) fn remove(store: &PgStore, name: &str, version: &str) -> Result<(), StoreError> {
    store.with(|c| {
        c.execute("DELETE FROM outpost_registry WHERE name = $1 AND version = $2", &[&name, &version])
            .map(|_| ())
    })
}

pub(super) fn policy(store: &PgStore, name: &str) -> Result<Option<String>, StoreError> {
    store.text_by_key("SELECT policy::text FROM outpost_registry_policies WHERE name = $1", name)
}

pub(super) fn set_policy(store: &PgStore, name: &str, value: &[u8]) -> Result<(), StoreError> {
    let text = String::from_utf8_lossy(value).into_owned();
    store.with(|c| {
        c.execute(
            "INSERT INTO outpost_registry_policies (name, policy) VALUES ($1, $2::text::json)
             ON CONFLICT (name) DO UPDATE SET policy = excluded.policy",
            &[&name, &text],
        )
        .map(|_| ())
    })
}

/// Stores the chunks of an artifact not stored yet (two replicas storing one artifact write the
/// same bytes; the second adds nothing).
pub(super) fn put_blob(store: &PgStore, sha256: &str, compressed: &[u8]) -> Result<(), StoreError> {
    let chunks: Vec<&[u8]> =
        if compressed.is_empty() { vec![&[][..]] } else { compressed.chunks(CHUNK).collect() };
    let count = i32::try_from(chunks.len()).unwrap_or(i32::MAX);
    store.transaction(|tx| {
        for (i, chunk) in chunks.iter().enumerate() {
            let i = i32::try_from(i).unwrap_or(i32::MAX);
            tx.execute(
                "INSERT INTO outpost_blobs (sha256, chunk, chunks, bytes) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (sha256, chunk) DO NOTHING",
                &[&sha256, &i, &count, chunk],
            )?;
        }
        Ok(Ok::<(), StoreError>(()))
    })?
}

/// An artifact's bytes; `None` when it is not stored (or only part of it is: a chunk missing
/// is a store that lost data, named as such).
pub(super) fn blob(store: &PgStore, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let rows: Vec<(i32, i32, Vec<u8>)> = store.with(|c| {
        c.query(
            "SELECT chunk, chunks, bytes FROM outpost_blobs WHERE sha256 = $1 ORDER BY chunk",
            &[&sha256],
        )?
        .into_iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect()
    })?;
    let Some(&(_, chunks, _)) = rows.first() else { return Ok(None) };
    let complete = rows.len() == usize::try_from(chunks).unwrap_or(0)
        && rows.iter().enumerate().all(|(i, (n, _, _))| usize::try_from(*n).ok() == Some(i));
    if !complete {
        return Err(StoreError::Corrupt {
            key: format!("blobs/{sha256}"),
            detail: format!("{} of its {chunks} chunks are stored", rows.len()),
        });
    }
    Ok(Some(rows.into_iter().flat_map(|(_, _, bytes)| bytes).collect()))
}

/// Deletes the artifact unless a stored version names it; `false` when one does.
pub(super) fn remove_unused_blob(store: &PgStore, sha256: &str) -> Result<bool, StoreError> {
    store.transaction(|tx| {
        // A push naming this artifact now inserts its version after the blob: locking the
        // versions that name it makes a racing push wait, or this see it.
        let named =
            tx.query("SELECT 1 FROM outpost_registry WHERE bundle_sha256 = $1 FOR SHARE", &[&sha256])?;
        if !named.is_empty() {
            return Ok(Ok(false));
        }
        tx.execute("DELETE FROM outpost_blobs WHERE sha256 = $1", &[&sha256])?;
        Ok(Ok::<bool, StoreError>(true))
    })?
}
