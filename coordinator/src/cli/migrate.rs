//! `outpost-coordinator migrate --from sled://DIR --to postgres://…`: moves a single-node
//! coordinator's state into PostgreSQL, for replicas to serve from (`docs/scale-out.md`).
//!
//! The source must be a stopped coordinator's data directory (its database locked means one
//! serves from it: refused) whose audit chain verifies; roll-ups it lacks are built first (as
//! its next start would). The target's schema is brought up to date and must hold no records.
//! Every tree ([`trees`]), the audit log and the registry's artifacts are then copied in **one
//! transaction** (`COPY … (FORMAT binary)`, a chunk of rows at a time), each table's count
//! checked against what sled held before the commit: a migration that fails leaves the target
//! empty, to run again. After the commit the migration is itself an audit entry, and the chain
//! — the copied entries and that one — is verified on PostgreSQL.
//!
//! The data directory keeps the keys (CA, signing and online keys, admin token): every replica
//! needs them (`backup`/`restore`). Exit codes: 0 migrated, 1 refused or failed, 2 bad usage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};

use crate::base::audit::AuditLog;
use crate::base::pg::{self, PgUrl, store::PgStore};
use crate::base::store::{Store, StoreError};

mod cell;
mod trees;

use cell::Cell;

#[derive(Debug, clap::Args)]
#[command(after_help = "Example (the coordinator stopped first):
  OUTPOST_COORDINATOR_STORE__URL='postgres://outpost:…@db.internal/outpost' \\
      outpost-coordinator migrate --from sled:///var/lib/outpost-coordinator --ca-file /etc/outpost/db-ca.pem")]
pub struct MigrateArgs {
    /// The single-node coordinator's store: sled://<data_dir>, with no coordinator serving from it.
    #[arg(long)]
    pub from: String,
    /// The PostgreSQL store to fill (postgres://…; its schema is made at need, and it must hold no
    /// records yet). From the environment, a password stays out of the process list.
    #[arg(long, env = "OUTPOST_COORDINATOR_STORE__URL", hide_env_values = true)]
    pub to: String,
    /// CA certificate (PEM) the PostgreSQL server's certificate must chain to (`[store] ca_file`).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// Why a migration did not happen; `usage` errors exit 2.
#[derive(Debug)]
struct Failed {
    message: String,
    usage: bool,
}

impl Failed {
    fn usage(message: impl Into<String>) -> Failed {
        Failed { message: message.into(), usage: true }
    }
}

impl<E: std::fmt::Display> From<E> for Failed {
    fn from(e: E) -> Failed {
        Failed { message: e.to_string(), usage: false }
    }
}

pub fn migrate(args: &MigrateArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failed) => {
            eprintln!("error: {}", failed.message);
            ExitCode::from(if failed.usage { 2 } else { 1 })
        }
    }
}

fn run(args: &MigrateArgs) -> Result<(), Failed> {
    let started = Instant::now();
    let data_dir = sled_dir(&args.from)?;
    let ca = match &args.ca_file {
        Some(path) => Some(
            std::fs::read(path).map_err(|e| Failed::usage(format!("cannot read {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let url = PgUrl::parse_with_ca(&args.to, ca.as_deref()).map_err(|e| Failed::usage(e.to_string()))?;
    let store = Store::open(&data_dir).map_err(|e| {
        if Store::is_locked(&e) {
            Failed::from(format!(
                "a coordinator is serving from {}: stop it first (migrate copies a store nobody writes)",
                data_dir.display()
            ))
        } else {
            Failed::from(e)
        }
    })?;
    let audited =
        AuditLog::entries_to_head(&data_dir, &store).map(|entries| entries.len()).map_err(|broken| {
            format!(
                "the audit chain of {} does not verify ({broken}): nothing was copied",
                data_dir.display()
            )
        })?;
    prepare(&store)?;
    eprintln!("source: {} ({audited} audit entries, chain verified)", data_dir.display());

    let target = open_target(&url)?;
    let copied = copy_all(&store, &data_dir, &target)?;
    let summary: Vec<String> = copied.iter().map(|(table, n)| format!("{table}={n}")).collect();
    let audit = AuditLog::open_postgres(&target).map_err(|e| e.to_string())?;
    audit
        .record(
            "outpost-coordinator",
            "admin",
            "store.migrate",
            url.masked(),
            "ok",
            &format!("from sled://{}: {}", data_dir.display(), summary.join(" ")),
        )
        .map_err(|e| format!("the records are in, but the migration could not be audited: {e}"))?;
    let verified = audit
        .verify()
        .map_err(|broken| format!("the audit chain on PostgreSQL does not verify: {broken}"))?;
    println!(
        "migrated {} into {} in {:.1} s: {} records, audit chain verified on PostgreSQL ({verified} entries, \
         the last this migration)",
        data_dir.display(),
        url.masked(),
        started.elapsed().as_secs_f64(),
        copied.values().sum::<u64>(),
    );
    println!(
        "next: set `[store] url` to it and start the replicas, each with this data directory's keys \
         (pki/, admin.token; `backup` then `restore` on each host); keep {} until they serve",
        data_dir.display()
    );
    Ok(())
}

/// The data directory of a `sled://` store URL.
fn sled_dir(from: &str) -> Result<PathBuf, Failed> {
    let Some(path) = from.strip_prefix("sled://") else {
        return Err(Failed::usage(format!("--from `{from}` is not a sled://<data_dir> store")));
    };
    let dir = PathBuf::from(path);
    if !dir.join("state").is_dir() {
        return Err(Failed::usage(format!(
            "{} is not a coordinator data directory (no state/)",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Builds the roll-ups a data directory lacks (as the coordinator's next start would), and
/// refuses a tree nobody knows how to copy.
fn prepare(store: &Store) -> Result<(), Failed> {
    let devices = crate::fleet::devices::Devices::open(store)?;
    let slos = crate::monitoring::slo::Slos::open(store)?;
    let labels = crate::monitoring::quality::Labels::open(store)?;
    crate::monitoring::report::History::open(store)?;
    slos.ensure_rolled_up_by_label(|| devices.labels_by_device())?;
    labels.ensure_rolled_up_by_label(|| devices.labels_by_device())?;
    store.flush()?;
    let known: Vec<&str> = trees::all().iter().map(|t| t.tree).chain(trees::FOLDED).collect();
    let unknown: Vec<String> = store.counts()?.into_keys().filter(|t| !known.contains(&t.as_str())).collect();
    if !unknown.is_empty() {
        return Err(Failed::from(format!(
            "this data directory holds trees this version cannot migrate ({}): nothing was copied",
            unknown.join(", ")
        )));
    }
    Ok(())
}

/// The target with its schema up to date.
fn open_target(url: &PgUrl) -> Result<PgStore, Failed> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let migrated = runtime.block_on(async {
        let mut client = url.connect("outpost-coordinator migrate").await?;
        pg::migrate(url, &mut client, "migrate").await
    })?;
    drop(runtime);
    eprintln!(
        "target: {} (schema version {}{})",
        url.masked(),
        pg::latest_schema(),
        if migrated.applied.is_empty() {
            String::new()
        } else {
            format!(", {} migrations applied", migrated.applied.len())
        }
    );
    Ok(PgStore::open(url, "outpost-coordinator migrate")?)
}

/// Rows converted, then copied, at a time.
const CHUNK_ROWS: usize = 10_000;

/// Why the copy stopped (the transaction rolled back: the target is as it was).
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error("the target already holds records ({0}): migrate fills an empty store only")]
    NotEmpty(String),
    #[error("record `{key}` of tree `{tree}` cannot be copied: {detail}")]
    Record { tree: &'static str, key: String, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading {path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{table} holds {found} rows after the copy, {expected} were copied into it")]
    Count { table: &'static str, expected: u64, found: u64 },
    #[error("tree `{tree}` holds {held} records, {copied} were copied")]
    Missed { tree: &'static str, held: u64, copied: u64 },
}

/// Copies everything in one transaction; the rows each table holds after it.
fn copy_all(store: &Store, data_dir: &Path, target: &PgStore) -> Result<BTreeMap<&'static str, u64>, Failed> {
    let outcome = target.with(|c| {
        let mut tx = c.transaction()?;
        match copy_in(&mut tx, store, data_dir)? {
            Ok(counts) => tx.commit().map(|()| Ok(counts)),
            Err(e) => Ok(Err(e)),
        }
    })?;
    Ok(outcome.map_err(|e| format!("{e}; nothing was copied"))?)
}

fn copy_in(
    tx: &mut postgres::Transaction<'_>,
    store: &Store,
    data_dir: &Path,
) -> Result<Result<BTreeMap<&'static str, u64>, CopyError>, postgres::Error> {
    let plan = trees::all();
    let mut tables: Vec<&'static str> = plan.iter().map(|t| t.table).collect();
    tables.extend(["outpost_audit", "outpost_blobs"]);
    tables.dedup();
    let mut held = Vec::new();
    for table in &tables {
        let n: i64 = tx.query_one(&format!("SELECT count(*) FROM {table}"), &[])?.try_get(0)?;
        if n > 0 {
            held.push(format!("{table}: {n}"));
        }
    }
    if !held.is_empty() {
        return Ok(Err(CopyError::NotEmpty(held.join(", "))));
    }
    let mut expected: BTreeMap<&'static str, u64> = BTreeMap::new();
    for copy in &plan {
        let started = Instant::now();
        let copied = match copy_tree(tx, store, copy)? {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        *expected.entry(copy.table).or_default() += copied;
        if copied > 0 {
            eprintln!(
                "  {:<20} → {:<28} {copied:>9} rows  {:.1} s",
                copy.tree,
                copy.table,
                started.elapsed().as_secs_f64()
            );
        }
    }
    match copy_audit(tx, store, data_dir)? {
        Ok(n) => expected.insert("outpost_audit", n),
        Err(e) => return Ok(Err(e)),
    };
    match copy_artifacts(tx, data_dir)? {
        Ok(n) => expected.insert("outpost_blobs", n),
        Err(e) => return Ok(Err(e)),
    };
    let mut found = BTreeMap::new();
    for (table, expected) in expected {
        let sql = if table == "outpost_blobs" {
            "SELECT count(DISTINCT sha256) FROM outpost_blobs".to_owned()
        } else {
            format!("SELECT count(*) FROM {table}")
        };
        let n = u64::try_from(tx.query_one(&sql, &[])?.try_get::<_, i64>(0)?).unwrap_or(0);
        if n != expected {
            return Ok(Err(CopyError::Count { table, expected, found: n }));
        }
        found.insert(table, n);
    }
    Ok(Ok(found))
}

/// Copies one tree, a chunk of rows at a time; the rows copied (each record's, checked against
/// what the tree holds).
fn copy_tree(
    tx: &mut postgres::Transaction<'_>,
    store: &Store,
    copy: &trees::TreeCopy,
) -> Result<Result<u64, CopyError>, postgres::Error> {
    let tree = match store.tree(copy.tree) {
        Ok(tree) => tree,
        Err(e) => return Ok(Err(e.into())),
    };
    let (held, mut copied, mut skipped) = (tree.len() as u64, 0u64, 0u64);
    let mut chunk: Vec<Vec<Cell>> = Vec::with_capacity(CHUNK_ROWS);
    let mut items = tree.iter();
    loop {
        let next = items.next();
        if let Some(item) = &next {
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(e) => return Ok(Err(store.storage_error(e.clone()).into())),
            };
            match (copy.row)(store, key, value) {
                Ok(Some(row)) => chunk.push(row),
                Ok(None) => skipped += 1,
                Err(detail) => {
                    let key = String::from_utf8_lossy(key).replace('\0', "/");
                    return Ok(Err(CopyError::Record { tree: copy.tree, key, detail }));
                }
            }
        }
        if chunk.len() == CHUNK_ROWS || (next.is_none() && !chunk.is_empty()) {
            copied += write_rows(tx, copy.table, &copy.columns, &chunk)?;
            chunk.clear();
            if held > 100_000 && copied % 100_000 == 0 {
                eprintln!("  {:<20}   {copied} of {held}", copy.tree);
            }
        }
        if next.is_none() {
            break;
        }
    }
    if copied + skipped != held {
        return Ok(Err(CopyError::Missed { tree: copy.tree, held, copied }));
    }
    Ok(Ok(copied))
}

/// `COPY`s `rows` into `table`; how many went in.
fn write_rows(
    tx: &mut postgres::Transaction<'_>,
    table: &str,
    columns: &[(&str, Type)],
    rows: &[Vec<Cell>],
) -> Result<u64, postgres::Error> {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let types: Vec<Type> = columns.iter().map(|(_, ty)| ty.clone()).collect();
    let sink = tx.copy_in(&format!("COPY {table} ({}) FROM STDIN (FORMAT binary)", names.join(", ")))?;
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    for row in rows {
        let values: Vec<&(dyn ToSql + Sync)> = row.iter().map(|cell| cell as &(dyn ToSql + Sync)).collect();
        writer.write(&values)?;
    }
    writer.finish()
}

/// The audit log's entries up to the recorded head ([`AuditLog::entries_to_head`]) and that
/// head.
fn copy_audit(
    tx: &mut postgres::Transaction<'_>,
    store: &Store,
    data_dir: &Path,
) -> Result<Result<u64, CopyError>, postgres::Error> {
    let entries = match AuditLog::entries_to_head(data_dir, store) {
        Ok(entries) => entries,
        Err(broken) => {
            let path = data_dir.join("audit.log");
            return Ok(Err(CopyError::File { path, detail: broken.to_string() }));
        }
    };
    let head = entries.last().map(|(entry, _)| (entry.seq, entry.hash.clone()));
    let rows: Vec<Vec<Cell>> = entries
        .into_iter()
        .map(|(entry, line)| vec![Cell::Int(pg::store::to_sql(entry.seq)), Cell::Json(line)])
        .collect();
    let started = Instant::now();
    let n = write_rows(tx, "outpost_audit", &[("seq", Type::INT8), ("entry", Type::JSON)], &rows)?;
    if let Some((seq, hash)) = head {
        tx.execute("UPDATE outpost_audit_head SET seq = $1, hash = $2", &[&pg::store::to_sql(seq), &hash])?;
    }
    eprintln!(
        "  {:<20} → {:<28} {n:>9} rows  {:.1} s",
        "audit.log",
        "outpost_audit",
        started.elapsed().as_secs_f64()
    );
    Ok(Ok(n))
}

/// The registry's artifact files, in chunks as the registry stores them; how many artifacts.
fn copy_artifacts(
    tx: &mut postgres::Transaction<'_>,
    data_dir: &Path,
) -> Result<Result<u64, CopyError>, postgres::Error> {
    let dir = data_dir.join("artifacts");
    let started = Instant::now();
    let mut names = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                match entry {
                    Ok(entry) => names.push(entry.file_name().to_string_lossy().into_owned()),
                    Err(e) => return Ok(Err(CopyError::File { path: dir, detail: e.to_string() })),
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Ok(Err(CopyError::File { path: dir, detail: e.to_string() })),
    }
    names.sort();
    let mut artifacts = 0;
    for name in names {
        // Files being written are `.tmp`-named: only whole artifacts count.
        let Some(sha256) = name.strip_suffix(".bundle.gz") else { continue };
        let path = dir.join(&name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => return Ok(Err(CopyError::File { path, detail: e.to_string() })),
        };
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(crate::models::registry::store::BLOB_CHUNK).collect()
        };
        let count = i32::try_from(chunks.len()).unwrap_or(i32::MAX);
        let rows: Vec<Vec<Cell>> = chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| {
                vec![
                    Cell::Text(sha256.to_owned()),
                    Cell::Int4(i32::try_from(i).unwrap_or(i32::MAX)),
                    Cell::Int4(count),
                    Cell::Bytes(chunk.to_vec()),
                ]
            })
            .collect();
        let columns =
            [("sha256", Type::TEXT), ("chunk", Type::INT4), ("chunks", Type::INT4), ("bytes", Type::BYTEA)];
        write_rows(tx, "outpost_blobs", &columns, &rows)?;
        artifacts += 1;
    }
    eprintln!(
        "  {:<20} → {:<28} {artifacts:>9} files {:.1} s",
        "artifacts/",
        "outpost_blobs",
        started.elapsed().as_secs_f64()
    );
    Ok(Ok(artifacts))
}

#[cfg(test)]
mod tests;
