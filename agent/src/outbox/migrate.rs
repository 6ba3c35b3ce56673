//! Rewriting an outbox written by an earlier version (one sled database, trees `entries`:
//! big-endian seq → stored envelope, and `meta`: `next_seq`, `prediction_cursor`) into entry
//! files, record for record. The new layout is built beside the old one (`outbox.new/`) and
//! swapped in by two renames; a start that finds the swap cut short finishes it. A sled
//! database that does not open or read is left in place: the scan then finds files that are
//! not the outbox's and quarantines them like any damage, above the high-water mark.

use std::path::Path;

use super::{OutboxError, entry_bytes, entry_path, write_meta};

/// Whether `dir` holds a sled database (the earlier outbox).
pub(super) fn is_sled(dir: &Path) -> bool {
    dir.join("conf").is_file() || dir.join("db").is_file()
}

/// Finishes a swap that a crash cut short: `outbox.new/` complete, `outbox/` gone.
pub(super) fn finish_interrupted(data_dir: &Path) -> Result<(), OutboxError> {
    let (dir, new) = (data_dir.join("outbox"), data_dir.join("outbox.new"));
    if !dir.exists() && new.join(super::META_FILE).is_file() {
        std::fs::rename(&new, &dir).map_err(|source| OutboxError::Storage { path: new.clone(), source })?;
    }
    Ok(())
}

fn be(bytes: Option<&[u8]>) -> Option<u64> {
    bytes.and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

/// The sled outbox's `(entries, next_seq, cursor)`, or `None` when it does not open or read.
type Old = (Vec<(u64, Vec<u8>)>, Option<u64>, Option<u64>);

fn read_old(dir: &Path) -> Result<Option<Old>, OutboxError> {
    let opened = crate::damage::contained(|| -> Result<Option<Old>, sled::Error> {
        let db = sled::Config::new().path(dir).cache_capacity(2 * 1024 * 1024).open()?;
        let entries = db.open_tree("entries")?;
        let meta = db.open_tree("meta")?;
        let mut out = Vec::new();
        for item in entries.iter() {
            let (key, value) = item?;
            let Some(seq) = be(Some(&key)) else { return Ok(None) };
            out.push((seq, value.to_vec()));
        }
        let next = be(meta.get(b"next_seq")?.as_deref());
        let cursor = be(meta.get(b"prediction_cursor")?.as_deref());
        Ok(Some((out, next, cursor)))
    });
    match opened {
        Ok(Ok(old)) => Ok(old),
        Ok(Err(e)) if e.to_string().contains("could not acquire lock") => {
            Err(OutboxError::Locked(dir.to_owned()))
        }
        Ok(Err(e)) if crate::damage::is_damage(&e) => Ok(None),
        Ok(Err(e)) => Err(OutboxError::Storage { path: dir.to_owned(), source: std::io::Error::other(e) }),
        Err(_panicked) => Ok(None),
    }
}

/// Rewrites the sled outbox in `dir` into entry files.
pub(super) fn from_sled(data_dir: &Path, dir: &Path) -> Result<(), OutboxError> {
    let Some((entries, next, cursor)) = read_old(dir)? else {
        tracing::error!(outbox = %dir.display(), "the outbox from an earlier version does not read; it will be quarantined");
        return Ok(());
    };
    let new = data_dir.join("outbox.new");
    let storage = |source| OutboxError::Storage { path: new.clone(), source };
    if new.exists() {
        std::fs::remove_dir_all(&new).map_err(storage)?;
    }
    std::fs::create_dir_all(&new).map_err(storage)?;
    let newest = entries.last().map_or(0, |(seq, _)| seq + 1);
    for (seq, stored) in &entries {
        outpost_shared::files::write_atomic(&entry_path(&new, *seq), &entry_bytes(None, stored))
            .map_err(storage)?;
    }
    write_meta(&new, next.unwrap_or(1).max(newest).max(1), cursor).map_err(storage)?;
    let old = data_dir.join(format!("outbox.sled-{}", outpost_shared::endpoints::now_ms()));
    std::fs::rename(dir, &old).map_err(storage)?;
    std::fs::rename(&new, dir).map_err(storage)?;
    std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(storage)?;
    std::fs::remove_dir_all(&old).map_err(storage)?;
    tracing::info!(outbox = %dir.display(), entries = entries.len(), "outbox: rewrote the earlier sled database into entry files");
    Ok(())
}
