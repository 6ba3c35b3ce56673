//! `outpost-coordinator backup` and `restore`: the whole coordinator into one encrypted file and
//! back ([`crate::base::backup`] holds the format).
//!
//! `backup` opens the data directory itself when no coordinator serves from it; when one does
//! (the database is locked), it asks that coordinator for a snapshot over its API
//! (`GET /api/v1/admin/backup`, the admin token read from the data directory, loopback only) and
//! encrypts the stream as it arrives. The file is written beside its final name and renamed only
//! once it is whole and on disk. `restore` fills an empty directory and checks every count and
//! the audit chain before it says so.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use outpost_shared::keysource::{KeySource, SourcedKey};

use crate::base::backup::{self, Opener, Sealer, Snapshot, Summary};
use crate::base::store::Store;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  outpost-coordinator backup --to /var/backups/outpost.opbackup --key file:/root/outpost-backup.key
  OUTPOST_BACKUP_KEY=$(cat key.hex) outpost-coordinator backup --to b.opbackup --key env:OUTPOST_BACKUP_KEY")]
pub struct BackupArgs {
    /// The backup file to write (replaced only once the new one is whole).
    #[arg(long)]
    pub to: PathBuf,
    /// The key the backup is encrypted under: file:PATH (made, 0600, if missing), env:NAME or
    /// credential:NAME; 64 hex digits. Keep it apart from the backup: without it nothing can be restored.
    #[arg(long)]
    pub key: String,
    /// Coordinator data directory.
    #[arg(long, default_value = "outpost-coordinator-data")]
    pub data_dir: PathBuf,
    /// The serving coordinator's API, asked for the snapshot when it holds the data directory.
    #[arg(long, default_value = "http://127.0.0.1:7400")]
    pub coordinator: String,
    /// CA certificate for an https:// coordinator (default `<data_dir>/pki/ca.pem`).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// The key the admin token is sealed with (`[secrets] key`).
    #[arg(long, env = "OUTPOST_COORDINATOR_SECRETS__KEY")]
    pub secrets_key: Option<String>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:
  outpost-coordinator restore --from /var/backups/outpost.opbackup --key file:/root/outpost-backup.key \\
      --data-dir /var/lib/outpost-coordinator")]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    pub from: PathBuf,
    /// The key it was encrypted under (file:PATH, env:NAME or credential:NAME).
    #[arg(long)]
    pub key: String,
    /// The data directory to rebuild: it must be missing or empty.
    #[arg(long, default_value = "outpost-coordinator-data")]
    pub data_dir: PathBuf,
}

/// Why a backup or a restore could not be done; `usage` errors exit 2.
struct Failed {
    message: String,
    usage: bool,
}

impl<E: std::fmt::Display> From<E> for Failed {
    fn from(e: E) -> Failed {
        Failed { message: e.to_string(), usage: false }
    }
}

fn usage(message: impl Into<String>) -> Failed {
    Failed { message: message.into(), usage: true }
}

fn exit(result: Result<(), Failed>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failed) => {
            eprintln!("error: {}", failed.message);
            ExitCode::from(if failed.usage { 2 } else { 1 })
        }
    }
}

fn load_key(spec: &str, create: bool) -> Result<SourcedKey, Failed> {
    let source = KeySource::parse(spec, crate::config::ENV_PREFIX).map_err(|e| usage(e.to_string()))?;
    let made = create && matches!(&source, KeySource::File(path) if !path.exists());
    let key = SourcedKey::load(&source, create).map_err(|e| usage(e.to_string()))?;
    if made {
        eprintln!("made a new backup key in {source} (0600): keep a copy apart from the backups");
    }
    Ok(key)
}

pub fn backup(args: &BackupArgs) -> ExitCode {
    exit(take_backup(args))
}

fn take_backup(args: &BackupArgs) -> Result<(), Failed> {
    let key = load_key(&args.key, true)?;
    if !args.data_dir.is_dir() {
        return Err(usage(format!("{} is not a coordinator data directory", args.data_dir.display())));
    }
    let partial = partial_path(&args.to);
    let file = create_private(&partial).map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
    let result = (|| -> Result<Summary, Failed> {
        let mut sealer = Sealer::new(Progress::new(BufWriter::new(file)), &key)?;
        // A replica on PostgreSQL keeps no state database here: its keys and files are what a
        // backup of the data directory holds (the records are backed up with pg_dump).
        let stateless = !args.data_dir.join("state").exists();
        let opened = if stateless { None } else { Some(Store::open(&args.data_dir)) };
        let summary = match opened {
            None => {
                eprintln!(
                    "{} holds no state database (the records are in PostgreSQL: back them up with \
                     pg_dump); backing up the keys and files",
                    args.data_dir.display()
                );
                Snapshot { store: None, data_dir: &args.data_dir }.write(&mut sealer)?
            }
            Some(Ok(store)) => {
                eprintln!("no coordinator serves from {}: reading it directly", args.data_dir.display());
                Snapshot { store: Some(&store), data_dir: &args.data_dir }.write(&mut sealer)?
            }
            Some(Err(e)) if Store::is_locked(&e) => {
                eprintln!(
                    "a coordinator serves from {}: asking it at {}",
                    args.data_dir.display(),
                    args.coordinator
                );
                let mut stream = online_snapshot(args)?;
                backup::relay(&mut stream, &mut sealer)?
            }
            Some(Err(e)) => return Err(e.into()),
        };
        let out = sealer.finish()?.into_inner();
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(summary)
    })();
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &args.to).map_err(|e| format!("cannot write {}: {e}", args.to.display()))?;
    if let Some(dir) = args.to.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all())?;
    }
    println!(
        "backup written to {}: {} state records, {} files ({}), {} audit entries; key {} ({})",
        args.to.display(),
        summary.records.values().sum::<u64>(),
        summary.files,
        mib(summary.file_bytes),
        summary.audit_entries,
        backup::fingerprint(&key),
        key.source(),
    );
    Ok(())
}

fn online_snapshot(args: &BackupArgs) -> Result<impl std::io::Read, Failed> {
    let secrets = crate::base::secrets::Secrets::from_spec(args.secrets_key.as_deref())
        .map_err(|e| usage(e.to_string()))?;
    let token_path = args.data_dir.join("admin.token");
    let token =
        secrets.read(&token_path)?.ok_or_else(|| format!("{} does not exist", token_path.display()))?;
    let ca = match (&args.ca_file, args.coordinator.starts_with("https://")) {
        (Some(path), _) => {
            Some(std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?)
        }
        (None, true) => Some(std::fs::read(args.data_dir.join("pki/ca.pem"))?),
        (None, false) => None,
    };
    let client = outpost_client::Client::new(
        &args.coordinator,
        String::from_utf8_lossy(&token).trim(),
        ca.as_deref(),
        Duration::from_secs(24 * 3600),
    )
    .map_err(|e| usage(e.to_string()))?;
    Ok(BufReader::with_capacity(1 << 20, client.get_reader("/api/v1/admin/backup")?))
}

pub fn restore(args: &RestoreArgs) -> ExitCode {
    exit(run_restore(args))
}

fn run_restore(args: &RestoreArgs) -> Result<(), Failed> {
    let key = load_key(&args.key, false)?;
    let file = std::fs::File::open(&args.from)
        .map_err(|e| usage(format!("cannot read {}: {e}", args.from.display())))?;
    let mut opener = Opener::new(BufReader::with_capacity(1 << 20, file), &key)?;
    let summary = backup::restore(&mut opener, &args.data_dir)?;
    println!(
        "restored {} into {}: {} state records, {} files ({}), {} audit entries (chain verified); backup taken {} by coordinator {}",
        args.from.display(),
        args.data_dir.display(),
        summary.records.values().sum::<u64>(),
        summary.files,
        mib(summary.file_bytes),
        summary.audit_entries,
        crate::models::packaging::utc(summary.created_at_ms / 1000),
        summary.coordinator_version,
    );
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn partial_path(to: &Path) -> PathBuf {
    let mut name = to.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    to.with_file_name(name)
}

fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Says how far a long backup has come, every few seconds, on stderr.
struct Progress<W: Write> {
    out: W,
    written: u64,
    started: Instant,
    said: Instant,
}

impl<W: Write> Progress<W> {
    fn new(out: W) -> Progress<W> {
        Progress { out, written: 0, started: Instant::now(), said: Instant::now() }
    }

    fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Write for Progress<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        if self.said.elapsed() >= Duration::from_secs(3) {
            self.said = Instant::now();
            eprintln!(
                "backing up: {} written in {:.0} s",
                mib(self.written),
                self.started.elapsed().as_secs_f64()
            );
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
