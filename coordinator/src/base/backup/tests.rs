//! Unit tests of backups: a round trip, the wrong key, damage anywhere, and names that would
//! leave the data directory.

use outpost_shared::keysource::{KeySource, SourcedKey};

use super::*;
use crate::base::audit::AuditLog;

fn key() -> SourcedKey {
    SourcedKey::generate(KeySource::Env("TEST_BACKUP_KEY".into())).unwrap()
}

/// A data directory with state in two trees, files (one in a subfolder), three audit entries
/// and an upload in flight (which a backup leaves out).
fn coordinator_dir() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..50u32 {
        store.load(b"devices", format!("dev-{i}").as_bytes(), &i.to_le_bytes()).unwrap();
    }
    store.load(b"registry", b"bc\x001.0.0", b"{\"stage\":\"production\"}").unwrap();
    let audit = AuditLog::open(dir.path(), &store).unwrap();
    for action in ["model.push", "deploy", "rollout.start"] {
        audit.record("admin", "admin", action, "bc@1.0.0", "ok", "").unwrap();
    }
    std::fs::create_dir_all(dir.path().join("pki")).unwrap();
    std::fs::write(dir.path().join("pki/ca.key"), b"-----BEGIN PRIVATE KEY-----").unwrap();
    std::fs::create_dir_all(dir.path().join("artifacts")).unwrap();
    std::fs::write(dir.path().join("artifacts/abc.bundle.gz"), vec![7u8; 3 << 20]).unwrap();
    std::fs::create_dir_all(dir.path().join("uploads")).unwrap();
    std::fs::write(dir.path().join("uploads/partial"), b"half a bundle").unwrap();
    store.flush().unwrap();
    (dir, store)
}

fn backup_of((dir, store): &(tempfile::TempDir, Store), key: &SourcedKey) -> (Vec<u8>, Summary) {
    let mut sealer = Sealer::new(Vec::new(), key).unwrap();
    let summary = Snapshot { store: Some(store), data_dir: dir.path() }.write(&mut sealer).unwrap();
    (sealer.finish().unwrap(), summary)
}

fn restore_from(bytes: &[u8], key: &SourcedKey, into: &Path) -> Result<Summary, BackupError> {
    let mut opener = Opener::new(bytes, key)?;
    restore(&mut opener, into)
}

#[test]
fn a_backup_restores_every_record_file_and_audit_entry() {
    let source = coordinator_dir();
    let key = key();
    let (bytes, summary) = backup_of(&source, &key);
    assert_eq!(summary.records.get("devices"), Some(&50));
    assert_eq!(summary.audit_entries, 3);
    assert_eq!(summary.files, 3, "audit.log, pki/ca.key, the artifact; not the upload: {summary:?}");
    assert!(!bytes.windows(27).any(|w| w == b"-----BEGIN PRIVATE KEY-----"), "the key is not in clear");

    let target = tempfile::tempdir().unwrap();
    let into = target.path().join("restored");
    let restored = restore_from(&bytes, &key, &into).unwrap();
    assert_eq!(restored, summary);
    assert_eq!(std::fs::read(into.join("pki/ca.key")).unwrap(), b"-----BEGIN PRIVATE KEY-----");
    assert_eq!(std::fs::read(into.join("artifacts/abc.bundle.gz")).unwrap().len(), 3 << 20);
    assert!(!into.join("uploads/partial").exists());
    let store = Store::open(&into).unwrap();
    assert_eq!(store.counts().unwrap().get("devices"), Some(&50));
    assert_eq!(AuditLog::verify_stored(&into, &store).unwrap(), 3);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&into.join("pki/ca.key")), 0o600);
        assert_eq!(mode(&into), 0o700);
    }
}

/// A replica on PostgreSQL: its data directory holds keys and files, its records are the
/// database's. The restored directory gets the keys and no empty state database (which would
/// pass for a single node's).
#[test]
fn a_replicas_backup_restores_its_keys_without_a_state_database() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pki")).unwrap();
    std::fs::write(dir.path().join("pki/ca.key"), b"-----BEGIN PRIVATE KEY-----").unwrap();
    std::fs::write(dir.path().join("admin.token"), b"token").unwrap();
    let key = key();
    let mut sealer = Sealer::new(Vec::new(), &key).unwrap();
    let summary = Snapshot { store: None, data_dir: dir.path() }.write(&mut sealer).unwrap();
    let bytes = sealer.finish().unwrap();
    assert_eq!((summary.files, summary.audit_entries), (2, 0));
    assert!(summary.records.values().all(|n| *n == 0), "{summary:?}");

    let target = tempfile::tempdir().unwrap();
    let into = target.path().join("replica");
    assert_eq!(restore_from(&bytes, &key, &into).unwrap(), summary);
    assert_eq!(std::fs::read(into.join("pki/ca.key")).unwrap(), b"-----BEGIN PRIVATE KEY-----");
    assert!(!into.join("state").exists(), "a state database was made for a replica");
}

#[test]
fn an_audit_log_ahead_of_its_head_is_cut_at_the_head() {
    let source = coordinator_dir();
    // An entry the writer appended but whose head it had not recorded yet (a backup taken at
    // that instant) is left out, so the restored chain verifies.
    let log = source.0.path().join("audit.log");
    let mut text = std::fs::read(&log).unwrap();
    text.extend_from_slice(b"{\"seq\":4,\"half\":\"written\"}\n");
    std::fs::write(&log, text).unwrap();
    let key = key();
    let (bytes, summary) = backup_of(&source, &key);
    assert_eq!(summary.audit_entries, 3);
    let target = tempfile::tempdir().unwrap();
    restore_from(&bytes, &key, &target.path().join("r")).unwrap();
}

#[test]
fn the_wrong_key_is_named_by_both_fingerprints() {
    let source = coordinator_dir();
    let (bytes, _) = backup_of(&source, &key());
    let other = key();
    let target = tempfile::tempdir().unwrap();
    let refused = restore_from(&bytes, &other, &target.path().join("r")).unwrap_err();
    assert!(matches!(refused, BackupError::WrongKey { .. }), "{refused}");
    assert!(refused.to_string().contains(&fingerprint(&other)), "{refused}");
    assert!(!target.path().join("r").exists());
}

#[test]
fn damage_anywhere_is_refused_and_leaves_nothing_behind() {
    let source = coordinator_dir();
    let key = key();
    let (bytes, _) = backup_of(&source, &key);
    let target = tempfile::tempdir().unwrap();
    let step = bytes.len() / 40;
    for at in (0..bytes.len()).step_by(step).chain([bytes.len() - 1]) {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x20;
        let into = target.path().join(format!("flip-{at}"));
        let refused = restore_from(&flipped, &key, &into);
        assert!(refused.is_err(), "a flip at {at} of {} went unnoticed", bytes.len());
        assert!(!into.exists(), "a failed restore left {}", into.display());
    }
    for cut in [5, bytes.len() / 2, bytes.len() - 1] {
        let into = target.path().join(format!("cut-{cut}"));
        let refused = restore_from(&bytes[..cut], &key, &into).unwrap_err();
        assert!(refused.to_string().contains("cut short"), "cut at {cut}: {refused}");
        assert!(!into.exists());
    }
    let mut longer = bytes.clone();
    longer.push(0);
    let refused = restore_from(&longer, &key, &target.path().join("longer")).unwrap_err();
    assert!(refused.to_string().contains("bytes follow the last chunk"), "{refused}");
}

#[test]
fn a_restore_fills_only_an_empty_directory() {
    let source = coordinator_dir();
    let key = key();
    let (bytes, _) = backup_of(&source, &key);
    let refused = restore_from(&bytes, &key, source.0.path()).unwrap_err();
    assert!(matches!(refused, BackupError::NotEmpty(_)), "{refused}");
    assert!(source.0.path().join("pki/ca.key").exists(), "the existing directory is untouched");
    let empty = tempfile::tempdir().unwrap();
    restore_from(&bytes, &key, empty.path()).unwrap();
}

/// A backup sealed with the right key but naming a file outside the data directory (a crafted
/// or buggy backup): refused by name, nothing written anywhere.
#[test]
fn a_name_that_leaves_the_data_directory_is_refused() {
    let key = key();
    for name in ["../escaped", "/etc/escaped", "pki/../../escaped", "state/db", "a\nb", ""] {
        let mut sealer = Sealer::new(Vec::new(), &key).unwrap();
        write_record(&mut sealer, KIND_FILE, name.as_bytes(), b"x").unwrap();
        write_record(&mut sealer, KIND_END, b"", b"{}").unwrap();
        let bytes = sealer.finish().unwrap();
        let target = tempfile::tempdir().unwrap();
        let into = target.path().join("inner").join("r");
        let refused = restore_from(&bytes, &key, &into).unwrap_err();
        assert!(refused.to_string().contains("would leave the data directory"), "{name:?}: {refused}");
        assert!(!target.path().join("inner/escaped").exists() && !target.path().join("escaped").exists());
    }
}

/// The API's snapshot stream relayed into a sealed file: whole, it restores; broken off at any
/// point (a dropped connection, a coordinator killed mid-backup), the relay refuses it instead
/// of writing a short backup.
#[test]
fn a_snapshot_stream_that_breaks_off_never_makes_a_backup() {
    let source = coordinator_dir();
    let mut plain = Vec::new();
    let summary = Snapshot { store: Some(&source.1), data_dir: source.0.path() }.write(&mut plain).unwrap();
    let key = key();
    let mut sealer = Sealer::new(Vec::new(), &key).unwrap();
    assert_eq!(relay(&mut &plain[..], &mut sealer).unwrap(), summary);
    let sealed = sealer.finish().unwrap();
    let target = tempfile::tempdir().unwrap();
    assert_eq!(restore_from(&sealed, &key, &target.path().join("r")).unwrap(), summary);
    for cut in [0, 3, plain.len() / 3, plain.len() - 2] {
        let mut sealer = Sealer::new(Vec::new(), &key).unwrap();
        let refused = relay(&mut &plain[..cut], &mut sealer).unwrap_err();
        assert!(
            refused.to_string().contains("cut short") || refused.to_string().contains("broke off"),
            "{refused}"
        );
    }
}
