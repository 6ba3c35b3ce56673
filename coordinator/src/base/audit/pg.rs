//! The audit log on PostgreSQL: table `outpost_audit` (one row per entry, the JSON it was
//! hashed from) and the chain's head in `outpost_audit_head` (migration 9), shared by every
//! replica.

use super::{AuditEntry, Broken, Chain, Pending, chain};
use crate::base::pg::store::{PgStore, to_sql};
use crate::base::store::{StoreError, now_ms};

/// Entries read per query while verifying.
const PAGE: i64 = 10_000;

/// Chains `group` after the head, stores it and moves the head, in one transaction that holds
/// the head row's lock: replicas appending at once take turns.
pub(super) fn append(store: &PgStore, group: &[&Pending]) -> Result<Vec<AuditEntry>, StoreError> {
    store.transaction(|tx| {
        let head = tx.query_one("SELECT seq, hash FROM outpost_audit_head FOR UPDATE", &[])?;
        let (seq, prev): (i64, String) = (head.try_get(0)?, head.try_get(1)?);
        let entries = match chain(from_sql(seq), &prev, now_ms(), group.iter().copied()) {
            Ok(entries) => entries,
            Err(e) => return Ok(Err(e)),
        };
        let Some(last) = entries.last() else { return Ok(Ok(entries)) };
        let mut seqs = Vec::with_capacity(entries.len());
        let mut texts = Vec::with_capacity(entries.len());
        for entry in &entries {
            match serde_json::to_string(entry) {
                Ok(text) => texts.push(text),
                Err(e) => {
                    return Ok(Err(StoreError::Corrupt {
                        key: format!("audit entry {}", entry.seq),
                        detail: format!("cannot encode: {e}"),
                    }));
                }
            }
            seqs.push(to_sql(entry.seq));
        }
        tx.execute(
            "INSERT INTO outpost_audit (seq, entry)
             SELECT * FROM unnest($1::bigint[], $2::text[]::json[])",
            &[&seqs, &texts],
        )?;
        tx.execute("UPDATE outpost_audit_head SET seq = $1, hash = $2", &[&to_sql(last.seq), &last.hash])?;
        Ok(Ok(entries))
    })?
}

/// The recorded head: the newest entry's number and hash.
pub(super) fn head(store: &PgStore) -> Result<(u64, String), StoreError> {
    store.with(|c| {
        let row = c.query_one("SELECT seq, hash FROM outpost_audit_head", &[])?;
        Ok((from_sql(row.try_get(0)?), row.try_get(1)?))
    })
}

fn decode(text: &str, position: u64) -> Result<AuditEntry, Broken> {
    serde_json::from_str(text).map_err(|e| Broken::NotAnEntry { line: position, detail: e.to_string() })
}

/// The newest `limit` entries, oldest first.
pub(super) fn tail(store: &PgStore, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let texts: Vec<(i64, String)> = store.with(|c| {
        c.query("SELECT seq, entry::text FROM outpost_audit ORDER BY seq DESC LIMIT $1", &[&limit])?
            .into_iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    })?;
    texts
        .iter()
        .rev()
        .map(|(seq, text)| {
            decode(text, from_sql(*seq))
                .map_err(|e| StoreError::Corrupt { key: format!("audit entry {seq}"), detail: e.to_string() })
        })
        .collect()
}

/// Checks every row, in order, against the head, all read in one snapshot (entries another
/// replica appends meanwhile are neither half-read nor taken for forged ones).
pub(super) fn verify(store: &PgStore) -> Result<u64, Broken> {
    store
        .with(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let row = tx.query_one("SELECT seq, hash FROM outpost_audit_head", &[])?;
            let (head_seq, head_hash): (i64, String) = (row.try_get(0)?, row.try_get(1)?);
            let mut chain = Chain::default();
            let mut after = i64::MIN;
            loop {
                let page = tx.query(
                    "SELECT seq, entry::text FROM outpost_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &PAGE],
                )?;
                let Some(last) = page.last() else { break };
                after = last.try_get(0)?;
                for row in &page {
                    let text: String = row.try_get(1)?;
                    if let Err(broken) = decode(&text, chain.count + 1).and_then(|e| chain.follow(&e)) {
                        return Ok(Err(broken));
                    }
                }
            }
            tx.commit()?;
            let head = (head_seq > 0 || chain.count > 0).then_some((from_sql(head_seq), head_hash));
            Ok(chain.ends_at(head))
        })
        .map_err(|e| Broken::Unreadable(e.to_string()))?
}

/// A stored sequence number (never negative: they count from 1).
fn from_sql(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
