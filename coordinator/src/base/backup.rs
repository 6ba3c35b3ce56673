//! Backups: everything a coordinator's data directory holds — the state database, the registry's
//! artifacts, the CA and the signing keys, the trust root, the audit log — in one file encrypted
//! under a key the operator gives, and the way back from that file to a data directory.
//!
//! **The file.** A header `OPBACKUP ‖ 1 ‖ fingerprint length ‖ key fingerprint ‖ nonce prefix (4)`,
//! then chunks `length u32 LE ‖ last u8 ‖ ChaCha20-Poly1305(≤ 1 MiB)`, the nonce being the prefix
//! and the chunk's number, the header, number and last flag bound in as associated data: a chunk
//! cannot be altered, reordered or dropped from the end without the restore saying so, and a wrong
//! key is named by its fingerprint before anything is decrypted.
//!
//! **Inside,** records `kind u8 ‖ name length u32 ‖ name ‖ data length u64 ‖ data`: kind 1 a
//! file (its path relative to the data directory), kind 2 a state record (name = tree, data =
//! `key length u32 ‖ key ‖ value`), kind 0 the end, carrying the [`Summary`] the restore checks
//! its counts against. Not included: the spool of uploads in flight (`uploads/`).
//!
//! **While serving** ([`Snapshot::write`] runs beside the coordinator's own writers): every record
//! and file is whole; trees are read one after the other (`meta`, with the audit head, first), and
//! the audit log is cut at that head, so the restored chain verifies. Files on disk holding
//! secrets are copied as they are — sealed if `[secrets] key` seals them, so a restore needs that
//! key too.
//!
//! **Restoring** ([`restore`]) fills an empty directory only, checks every name it writes (no
//! `..`, no absolute path), every count against the summary and the audit chain, and removes what
//! it wrote if any of that fails.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use outpost_shared::keysource::SourcedKey;
use ring::aead::{Aad, LessSafeKey, NONCE_LEN, Nonce};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::base::store::{DumpError, Store, StoreError};

const MAGIC: &[u8; 8] = b"OPBACKUP";
const FORMAT: u8 = 1;
/// Plaintext bytes per encrypted chunk.
const CHUNK: usize = 1 << 20;
/// The label a backup key's fingerprint is taken under.
const FINGERPRINT_LABEL: &[u8] = b"outpost-backup-key";
const TAG_LEN: usize = 16;

/// The name a backup key goes by in a backup's header, in errors and in the `backup` command's
/// output (never the key itself).
pub fn fingerprint(key: &SourcedKey) -> String {
    key.fingerprint(FINGERPRINT_LABEL)
}

const KIND_END: u8 = 0;
const KIND_FILE: u8 = 1;
const KIND_RECORD: u8 = 2;
/// Longest name (a path or a tree name) a record may carry.
const MAX_NAME: u32 = 4096;
/// Longest summary the end record may carry.
const MAX_SUMMARY: u64 = 1 << 20;

/// What a backup holds, written at its end and checked by the restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub created_at_ms: u64,
    pub coordinator_version: String,
    pub files: u64,
    pub file_bytes: u64,
    /// State records per tree.
    pub records: BTreeMap<String, u64>,
    /// The audit entries the backup holds (the chain's head when `meta` was read).
    pub audit_entries: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("writing the backup: {0}")]
    Output(std::io::Error),
    #[error("reading the backup: {0}")]
    Input(std::io::Error),
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error("the backup was made with key {made_with}; the key given ({given_source}) is {given}")]
    WrongKey { made_with: String, given: String, given_source: String },
    #[error("{0} is not empty: a backup is restored into a new or empty directory")]
    NotEmpty(PathBuf),
    #[error("the restored {what} do not match the backup: {found} restored, the backup says {expected}")]
    Count { what: String, found: String, expected: String },
    #[error("the restored audit log does not verify: {0}")]
    Audit(String),
    #[error("no random numbers from the system")]
    Random,
}

fn damaged(what: impl Into<String>) -> BackupError {
    BackupError::Damaged(what.into())
}

/// The plaintext records of a backup of `data_dir`, written to `out` (an encrypting
/// [`Sealer`], or the API's response body that the `backup` command seals).
pub struct Snapshot<'a> {
    /// The state database; `None` when the records live in PostgreSQL (whose own tools back
    /// them up): the backup then holds the data directory's files — the CA, the keys, the
    /// trust root's files, the admin token — and no state record.
    pub store: Option<&'a Store>,
    pub data_dir: &'a Path,
}

impl Snapshot<'_> {
    pub fn write(&self, out: &mut dyn Write) -> Result<Summary, BackupError> {
        let mut summary = Summary {
            created_at_ms: crate::base::store::now_ms(),
            coordinator_version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Summary::default()
        };
        let mut audit_head = None;
        let mut each = |tree: &[u8], key: &[u8], value: &[u8]| -> std::io::Result<()> {
            if tree == b"meta" && key == crate::base::audit::HEAD_KEY {
                audit_head = Some(crate::base::audit::head_seq_of(value));
            }
            let mut data = Vec::with_capacity(4 + key.len() + value.len());
            data.extend_from_slice(&(key.len() as u32).to_le_bytes());
            data.extend_from_slice(key);
            data.extend_from_slice(value);
            write_record(out, KIND_RECORD, tree, &data)?;
            *summary.records.entry(String::from_utf8_lossy(tree).into_owned()).or_default() += 1;
            Ok(())
        };
        if let Some(store) = self.store {
            store.dump(&mut each).map_err(|e| match e {
                DumpError::Store(e) => BackupError::Store(e),
                DumpError::Write(e) => BackupError::Output(e),
            })?;
        }
        summary.audit_entries = audit_head.unwrap_or(0);
        for (relative, path) in files_under(self.data_dir)? {
            let bytes =
                std::fs::read(&path).map_err(|source| BackupError::Read { path: path.clone(), source })?;
            let bytes =
                if relative == "audit.log" { audit_prefix(&bytes, summary.audit_entries) } else { &bytes };
            write_record(out, KIND_FILE, relative.as_bytes(), bytes).map_err(BackupError::Output)?;
            summary.files += 1;
            summary.file_bytes += bytes.len() as u64;
        }
        let end = serde_json::to_vec(&summary).map_err(|e| BackupError::Output(std::io::Error::other(e)))?;
        write_record(out, KIND_END, b"", &end).map_err(BackupError::Output)?;
        out.flush().map_err(BackupError::Output)?;
        Ok(summary)
    }
}

/// The first `entries` lines of the audit log: the ones the recorded head vouches for (the
/// writer appends before it moves the head, so the file may run ahead, never behind).
fn audit_prefix(log: &[u8], entries: u64) -> &[u8] {
    let mut seen = 0;
    for (i, b) in log.iter().enumerate() {
        if seen == entries {
            return &log[..i];
        }
        if *b == b'\n' {
            seen += 1;
        }
    }
    log
}

/// Every file under `data_dir` but the database and the upload spool, by relative path.
fn files_under(data_dir: &Path) -> Result<Vec<(String, PathBuf)>, BackupError> {
    let mut found = Vec::new();
    let mut pending = vec![data_dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|source| BackupError::Read { path: dir.clone(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| BackupError::Read { path: dir.clone(), source })?;
            let path = entry.path();
            let relative = path.strip_prefix(data_dir).unwrap_or(&path).to_string_lossy().into_owned();
            if relative == "state" || relative == "uploads" {
                continue;
            }
            let kind =
                entry.file_type().map_err(|source| BackupError::Read { path: path.clone(), source })?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                found.push((relative, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn write_record(out: &mut dyn Write, kind: u8, name: &[u8], data: &[u8]) -> std::io::Result<()> {
    out.write_all(&[kind])?;
    out.write_all(&(name.len() as u32).to_le_bytes())?;
    out.write_all(name)?;
    out.write_all(&(data.len() as u64).to_le_bytes())?;
    out.write_all(data)
}

/// Encrypts a backup as it is written: the header first, then a chunk per MiB.
pub struct Sealer<W: Write> {
    out: W,
    key: LessSafeKey,
    header: Vec<u8>,
    prefix: [u8; 4],
    number: u64,
    pending: Vec<u8>,
}

impl<W: Write> Sealer<W> {
    pub fn new(mut out: W, key: &SourcedKey) -> Result<Sealer<W>, BackupError> {
        let mut prefix = [0u8; 4];
        SystemRandom::new().fill(&mut prefix).map_err(|_| BackupError::Random)?;
        let fingerprint = fingerprint(key);
        let mut header = MAGIC.to_vec();
        header.push(FORMAT);
        header.push(fingerprint.len() as u8);
        header.extend_from_slice(fingerprint.as_bytes());
        header.extend_from_slice(&prefix);
        out.write_all(&header).map_err(BackupError::Output)?;
        Ok(Sealer { out, key: key.cipher(), header, prefix, number: 0, pending: Vec::with_capacity(CHUNK) })
    }

    fn seal(&mut self, last: bool) -> std::io::Result<()> {
        let mut chunk = std::mem::take(&mut self.pending);
        let (nonce, aad) = chunk_nonce(&self.header, &self.prefix, self.number, last);
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(aad), &mut chunk)
            .map_err(|_| std::io::Error::other("encryption failed"))?;
        self.out.write_all(&(chunk.len() as u32).to_le_bytes())?;
        self.out.write_all(&[u8::from(last)])?;
        self.out.write_all(&chunk)?;
        self.number += 1;
        chunk.clear();
        self.pending = chunk;
        Ok(())
    }

    /// Seals the last chunk and hands back the output (flushed).
    pub fn finish(mut self) -> Result<W, BackupError> {
        self.seal(true).map_err(BackupError::Output)?;
        self.out.flush().map_err(BackupError::Output)?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(CHUNK - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == CHUNK {
            self.seal(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn chunk_nonce(header: &[u8], prefix: &[u8; 4], number: u64, last: bool) -> (Nonce, Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..4].copy_from_slice(prefix);
    nonce[4..].copy_from_slice(&number.to_be_bytes());
    let mut aad = header.to_vec();
    aad.extend_from_slice(&number.to_le_bytes());
    aad.push(u8::from(last));
    (Nonce::assume_unique_for_key(nonce), aad)
}

/// Decrypts a backup as it is read; every chunk is authenticated before a byte of it is handed on.
pub struct Opener<R: Read> {
    input: R,
    key: LessSafeKey,
    header: Vec<u8>,
    prefix: [u8; 4],
    number: u64,
    plain: Vec<u8>,
    at: usize,
    ended: bool,
}

impl<R: Read> Opener<R> {
    pub fn new(mut input: R, key: &SourcedKey) -> Result<Opener<R>, BackupError> {
        let mut head = [0u8; 10];
        read_exact(&mut input, &mut head, "the header")?;
        if &head[..8] != MAGIC {
            return Err(damaged("not an Outpost backup (bad magic bytes)"));
        }
        if head[8] != FORMAT {
            return Err(damaged(format!("backup format {} is not one this build reads ({FORMAT})", head[8])));
        }
        let mut fingerprint = vec![0u8; usize::from(head[9])];
        read_exact(&mut input, &mut fingerprint, "the key fingerprint")?;
        let mut prefix = [0u8; 4];
        read_exact(&mut input, &mut prefix, "the header")?;
        let made_with = String::from_utf8_lossy(&fingerprint).into_owned();
        let given = self::fingerprint(key);
        if made_with != given {
            return Err(BackupError::WrongKey { made_with, given, given_source: key.source().to_string() });
        }
        let mut header = head.to_vec();
        header.extend_from_slice(&fingerprint);
        header.extend_from_slice(&prefix);
        Ok(Opener {
            input,
            key: key.cipher(),
            header,
            prefix,
            number: 0,
            plain: Vec::new(),
            at: 0,
            ended: false,
        })
    }

    /// The next chunk, authenticated; `false` once the last one was read.
    fn next_chunk(&mut self) -> Result<bool, BackupError> {
        if self.ended {
            return Ok(false);
        }
        let mut head = [0u8; 5];
        read_exact(&mut self.input, &mut head, "a chunk")?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if !(TAG_LEN..=CHUNK + TAG_LEN).contains(&len) || head[4] > 1 {
            return Err(damaged(format!("chunk {} has an impossible header", self.number)));
        }
        let last = head[4] == 1;
        let mut chunk = vec![0u8; len];
        read_exact(&mut self.input, &mut chunk, "a chunk")?;
        let (nonce, aad) = chunk_nonce(&self.header, &self.prefix, self.number, last);
        let plain = self.key.open_in_place(nonce, Aad::from(aad), &mut chunk).map_err(|_| {
            damaged(format!("chunk {} does not authenticate: altered, reordered or cut", self.number))
        })?;
        let n = plain.len();
        chunk.truncate(n);
        self.plain = chunk;
        self.at = 0;
        self.number += 1;
        if last {
            self.ended = true;
            let mut extra = [0u8; 1];
            if self.input.read(&mut extra).map_err(BackupError::Input)? != 0 {
                return Err(damaged("bytes follow the last chunk"));
            }
        }
        Ok(true)
    }
}

fn read_exact(input: &mut (impl Read + ?Sized), buf: &mut [u8], what: &str) -> Result<(), BackupError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            damaged(format!("the file ends inside {what}: it was cut short"))
        }
        _ => BackupError::Input(e),
    })
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.plain.len() {
            if !self.next_chunk().map_err(std::io::Error::other)? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.plain.len() - self.at);
        buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Rebuilds `data_dir` (missing or empty) from the plaintext records `input` yields (an
/// [`Opener`]); on any failure removes what it wrote.
pub fn restore(input: &mut dyn Read, data_dir: &Path) -> Result<Summary, BackupError> {
    let existed = data_dir.exists();
    if existed {
        let mut entries = std::fs::read_dir(data_dir)
            .map_err(|source| BackupError::Read { path: data_dir.to_owned(), source })?;
        if entries.next().is_some() {
            return Err(BackupError::NotEmpty(data_dir.to_owned()));
        }
    }
    let result = fill(input, data_dir);
    if result.is_err() {
        let clear = if existed { clear_dir(data_dir) } else { std::fs::remove_dir_all(data_dir) };
        if let Err(e) = clear {
            tracing::warn!(dir = %data_dir.display(), error = %e, "could not remove a failed restore");
        }
    }
    result
}

fn clear_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() { std::fs::remove_dir_all(&path)? } else { std::fs::remove_file(&path)? }
    }
    Ok(())
}

fn fill(input: &mut dyn Read, data_dir: &Path) -> Result<Summary, BackupError> {
    make_private_dir(data_dir)?;
    // Opened at the first state record: a replica's backup (its records in PostgreSQL) holds
    // none, and its restored directory gets no empty state database.
    let mut store: Option<Store> = None;
    let (mut files, mut file_bytes) = (0u64, 0u64);
    let summary = loop {
        let (kind, name, data_len) = read_header(input)?;
        if kind == KIND_END {
            break read_end(input, data_len)?;
        }
        let mut data = input.take(data_len);
        match kind {
            KIND_FILE => {
                let relative = checked_path(&name)?;
                let path = data_dir.join(&relative);
                if let Some(parent) = path.parent() {
                    make_private_dir(parent)?;
                }
                let copied = write_file(&path, &mut data)?;
                if copied != data_len {
                    return Err(damaged(format!("{relative} is cut short")));
                }
                files += 1;
                file_bytes += copied;
            }
            KIND_RECORD => {
                if data_len > u64::from(u32::MAX) {
                    return Err(damaged("a state record is too large"));
                }
                let mut raw = Vec::with_capacity(data_len as usize);
                data.read_to_end(&mut raw).map_err(BackupError::Input)?;
                if raw.len() as u64 != data_len || raw.len() < 4 {
                    return Err(damaged("a state record is cut short"));
                }
                let key_len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
                if key_len > raw.len() - 4 {
                    return Err(damaged("a state record's key runs past its end"));
                }
                let store = match &mut store {
                    Some(store) => &*store,
                    none => &*none.insert(Store::open(data_dir)?),
                };
                store.load(&name, &raw[4..4 + key_len], &raw[4 + key_len..])?;
            }
            other => return Err(damaged(format!("unknown record kind {other}"))),
        }
    };
    let records = match &store {
        Some(store) => {
            store.flush()?;
            store.counts()?
        }
        None => BTreeMap::new(),
    };
    let expected: BTreeMap<_, _> =
        summary.records.iter().filter(|(_, n)| **n > 0).map(|(k, v)| (k.clone(), *v)).collect();
    if records != expected {
        return Err(BackupError::Count {
            what: "state records".into(),
            found: format!("{records:?}"),
            expected: format!("{expected:?}"),
        });
    }
    if (files, file_bytes) != (summary.files, summary.file_bytes) {
        return Err(BackupError::Count {
            what: "files".into(),
            found: format!("{files} files, {file_bytes} bytes"),
            expected: format!("{} files, {} bytes", summary.files, summary.file_bytes),
        });
    }
    // Without state records the audit chain is PostgreSQL's (its head is not here either).
    let entries = match &store {
        Some(store) => crate::base::audit::AuditLog::verify_stored(data_dir, store)
            .map_err(|e| BackupError::Audit(e.to_string()))?,
        None => 0,
    };
    if entries != summary.audit_entries {
        return Err(BackupError::Count {
            what: "audit entries".into(),
            found: entries.to_string(),
            expected: summary.audit_entries.to_string(),
        });
    }
    Ok(summary)
}

/// A record's kind, name and data length.
fn read_header(input: &mut dyn Read) -> Result<(u8, Vec<u8>, u64), BackupError> {
    let mut kind = [0u8; 1];
    read_exact(input, &mut kind, "a record")?;
    let mut len = [0u8; 4];
    read_exact(input, &mut len, "a record")?;
    let name_len = u32::from_le_bytes(len);
    if name_len > MAX_NAME {
        return Err(damaged(format!("a record's name is {name_len} bytes long")));
    }
    let mut name = vec![0u8; name_len as usize];
    read_exact(input, &mut name, "a record's name")?;
    let mut len = [0u8; 8];
    read_exact(input, &mut len, "a record")?;
    Ok((kind[0], name, u64::from_le_bytes(len)))
}

/// The end record's summary; nothing may follow it.
fn read_end(input: &mut dyn Read, data_len: u64) -> Result<Summary, BackupError> {
    if data_len > MAX_SUMMARY {
        return Err(damaged("the summary is too large"));
    }
    let mut raw = vec![0u8; data_len as usize];
    read_exact(input, &mut raw, "the summary")?;
    let summary: Summary =
        serde_json::from_slice(&raw).map_err(|e| damaged(format!("the summary is unreadable: {e}")))?;
    let mut extra = [0u8; 1];
    if input.read(&mut extra).map_err(BackupError::Input)? != 0 {
        return Err(damaged("records follow the end"));
    }
    Ok(summary)
}

/// Copies a snapshot's plaintext records from `input` (the API's stream) to `out` (a
/// [`Sealer`]), checking their structure as they pass; returns the summary at their end. A
/// stream that breaks off before its end record is an error, never a short backup.
pub fn relay(input: &mut dyn Read, out: &mut dyn Write) -> Result<Summary, BackupError> {
    loop {
        let (kind, name, data_len) = read_header(input)?;
        if !matches!(kind, KIND_END | KIND_FILE | KIND_RECORD) {
            return Err(damaged(format!("unknown record kind {kind}")));
        }
        if kind == KIND_END {
            let summary = read_end(input, data_len)?;
            let end =
                serde_json::to_vec(&summary).map_err(|e| BackupError::Output(std::io::Error::other(e)))?;
            write_record(out, KIND_END, b"", &end).map_err(BackupError::Output)?;
            return Ok(summary);
        }
        out.write_all(&[kind]).map_err(BackupError::Output)?;
        out.write_all(&(name.len() as u32).to_le_bytes()).map_err(BackupError::Output)?;
        out.write_all(&name).map_err(BackupError::Output)?;
        out.write_all(&data_len.to_le_bytes()).map_err(BackupError::Output)?;
        let copied = std::io::copy(&mut input.take(data_len), out).map_err(BackupError::Input)?;
        if copied != data_len {
            return Err(damaged("the snapshot stream broke off inside a record"));
        }
    }
}

/// A path a backup names, refused unless it is relative and stays inside the data directory.
fn checked_path(name: &[u8]) -> Result<String, BackupError> {
    let text = std::str::from_utf8(name).map_err(|_| damaged("a file name is not UTF-8"))?;
    let path = Path::new(text);
    let inside = !text.is_empty()
        && path.components().all(|c| matches!(c, Component::Normal(_)))
        && !text.chars().any(char::is_control);
    let first = path.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned());
    if !inside || matches!(first.as_deref(), Some("state" | "uploads")) {
        return Err(damaged(format!("file name `{}` would leave the data directory", text.escape_debug())));
    }
    Ok(text.to_owned())
}

fn write_file(path: &Path, data: &mut dyn Read) -> Result<u64, BackupError> {
    let write = |source| BackupError::Write { path: path.to_owned(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(write)?;
    let copied = std::io::copy(data, &mut file).map_err(|e| match e.kind() {
        std::io::ErrorKind::Other if e.get_ref().is_some() => BackupError::Input(e),
        _ => write(e),
    })?;
    file.sync_all().map_err(write)?;
    Ok(copied)
}

fn make_private_dir(dir: &Path) -> Result<(), BackupError> {
    let write = |source| BackupError::Write { path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(write)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(write)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

// Keep the tag length in step with ring's.
const _: () = assert!(TAG_LEN == ring::aead::MAX_TAG_LEN);
