use super::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

fn file_source(dir: &Path, name: &str) -> (KeySource, EncryptionConfig) {
    let path = dir.join(name);
    let source = KeySource::File(path.clone());
    (source.clone(), EncryptionConfig { mode: Mode::On, key: Some(format!("file:{}", path.display())) })
}

fn write_key(path: &Path, byte: u8) {
    outpost_shared::files::write_private(path, hex::encode([byte; 32]).as_bytes()).unwrap();
}

#[test]
fn sealed_bytes_open_only_at_their_own_place_in_their_own_store() {
    let sealer = Sealer::ephemeral().unwrap();
    let sealed = sealer.seal(Store::PredictionLog, &7u64.to_be_bytes(), b"1234.5678");
    assert!(is_sealed(&sealed));
    assert_eq!(sealed.len(), OVERHEAD + 9);
    assert!(!sealed.windows(9).any(|w| w == b"1234.5678"));
    assert_eq!(sealer.open(Store::PredictionLog, &7u64.to_be_bytes(), &sealed).unwrap(), b"1234.5678");
    assert_eq!(
        sealer.open(Store::PredictionLog, &8u64.to_be_bytes(), &sealed),
        Err(Unreadable::Authentication)
    );
    assert_eq!(sealer.open(Store::Outbox, &7u64.to_be_bytes(), &sealed), Err(Unreadable::Authentication));
    // Two seals of the same bytes differ (fresh nonces).
    assert_ne!(sealed, sealer.seal(Store::PredictionLog, &7u64.to_be_bytes(), b"1234.5678"));
}

#[test]
fn every_flipped_byte_is_refused() {
    let sealer = Sealer::ephemeral().unwrap();
    let sealed = sealer.seal(Store::Outbox, b"x", b"some telemetry");
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x40;
        assert!(sealer.open(Store::Outbox, b"x", &bad).is_err(), "flip at {i} was accepted");
    }
    assert_eq!(sealer.open(Store::Outbox, b"x", &sealed[..10]), Err(Unreadable::Short(10)));
}

#[test]
fn clear_values_stay_readable_and_sealed_ones_need_the_keys() {
    let sealer = Arc::new(Sealer::ephemeral().unwrap());
    let on = AtRest::sealed(Arc::clone(&sealer));
    let off = AtRest::clear();
    assert_eq!(on.read(Store::Outbox, b"1", &[1, 2, 3]).unwrap(), vec![1, 2, 3]);
    let sealed = on.write(Store::Outbox, b"1", vec![1, 2, 3]);
    assert_eq!(on.read(Store::Outbox, b"1", &sealed).unwrap(), vec![1, 2, 3]);
    assert_eq!(off.read(Store::Outbox, b"1", &sealed), Err(Unreadable::NoKeys));
    assert_eq!(off.write(Store::Outbox, b"1", vec![9]), vec![9]);
    assert_eq!(off.describe(), "off");
    assert!(on.describe().starts_with("on (chacha20-poly1305"));
}

#[test]
fn the_first_start_makes_a_private_key_file_and_keyring_and_later_starts_reuse_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = EncryptionConfig::default();
    let (sealer, opened) = open(dir.path(), &config).unwrap();
    assert_eq!(opened, Opened { created_keyring: true, created_key_file: true });
    for file in ["identity/storage.key", "keyring.json", "keyring.json.bak"] {
        let mode = std::fs::metadata(dir.path().join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let sealed = sealer.seal(Store::Bundle, b"bc@1", b"model bytes");
    let (again, opened) = open(dir.path(), &config).unwrap();
    assert_eq!(opened, Opened { created_keyring: false, created_key_file: false });
    assert_eq!(again.open(Store::Bundle, b"bc@1", &sealed).unwrap(), b"model bytes");
    // The keyring holds no key in the clear.
    let key = std::fs::read_to_string(dir.path().join("identity/storage.key")).unwrap();
    let keyring = std::fs::read_to_string(dir.path().join("keyring.json")).unwrap();
    assert!(!keyring.contains(key.trim()));
}

#[test]
fn a_wrong_key_is_refused_by_name_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (_, config) = file_source(dir.path(), "kek");
    write_key(&dir.path().join("kek"), 1);
    open(dir.path(), &config).unwrap();
    let before = std::fs::read(dir.path().join("keyring.json")).unwrap();
    write_key(&dir.path().join("kek"), 2);
    let err = open(dir.path(), &config).unwrap_err().to_string();
    assert!(
        err.contains("file:") && err.contains("kek") && err.contains("is not the key that wrapped"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.path().join("keyring.json")).unwrap(), before);
    // A missing key (a keyring without its key) is never replaced by a new one.
    let fresh = tempfile::tempdir().unwrap();
    open(fresh.path(), &EncryptionConfig::default()).unwrap();
    std::fs::remove_file(fresh.path().join("identity/storage.key")).unwrap();
    let err = open(fresh.path(), &EncryptionConfig::default()).unwrap_err().to_string();
    assert!(err.contains("storage.key") && err.contains("missing"), "{err}");
    assert!(!fresh.path().join("identity/storage.key").exists());
}

#[test]
fn sources_that_cannot_give_a_key_say_which_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let bad = |spec: &str| {
        open(dir.path(), &EncryptionConfig { mode: Mode::On, key: Some(spec.into()) })
            .unwrap_err()
            .to_string()
    };
    assert!(bad("vault:x").contains("expected file:PATH"));
    assert!(bad("env:").contains("nothing after the colon"));
    assert!(bad("env:A-B").contains("letters, digits"));
    assert!(bad("env:OUTPOST_KEY").contains("read as a configuration key"));
    assert!(bad("credential:../x").contains("no `/`"));
    let unset = bad("env:SURELY_UNSET_STORAGE_KEY_FOR_TEST");
    assert!(unset.contains("env:SURELY_UNSET_STORAGE_KEY_FOR_TEST") && unset.contains("missing"), "{unset}");
    // PATH is set, and not a key.
    let invalid = bad("env:PATH");
    assert!(invalid.contains("env:PATH is not usable") && invalid.contains("64 hex digits"), "{invalid}");
    std::fs::write(dir.path().join("short"), "abcd").unwrap();
    let short = bad(&format!("file:{}", dir.path().join("short").display()));
    assert!(short.contains("holds 4 bytes"), "{short}");
    assert!(!dir.path().join("keyring.json").exists());
}

#[test]
fn rotation_adds_a_key_and_every_older_record_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let config = EncryptionConfig::default();
    let (first, _) = open(dir.path(), &config).unwrap();
    let old = first.seal(Store::PredictionLog, b"1", b"old record");
    let (before, after) = rotate(dir.path(), &config).unwrap();
    assert_eq!(before, first.current_key());
    assert_ne!(before, after);
    let (second, _) = open(dir.path(), &config).unwrap();
    assert_eq!(second.current_key(), after);
    assert_eq!(second.open(Store::PredictionLog, b"1", &old).unwrap(), b"old record");
    let new = second.seal(Store::PredictionLog, b"2", b"new record");
    assert_eq!(new[2..6], after.to_be_bytes());
}

#[test]
fn rewrapping_moves_every_data_key_to_the_new_key_and_the_old_one_stops_working() {
    let dir = tempfile::tempdir().unwrap();
    let (_, old_config) = file_source(dir.path(), "old");
    let (new_source, new_config) = file_source(dir.path(), "new");
    write_key(&dir.path().join("old"), 3);
    write_key(&dir.path().join("new"), 4);
    let (sealer, _) = open(dir.path(), &old_config).unwrap();
    rotate(dir.path(), &old_config).unwrap();
    let sealed = sealer.seal(Store::Outbox, b"5", b"before the rewrap");
    let fingerprint = rewrap(dir.path(), &old_config, &new_source).unwrap();
    assert!(matches!(open(dir.path(), &old_config), Err(AtRestError::WrongKey { .. })));
    let (reopened, _) = open(dir.path(), &new_config).unwrap();
    assert_eq!(reopened.open(Store::Outbox, b"5", &sealed).unwrap(), b"before the rewrap");
    let status = status(dir.path()).unwrap().unwrap();
    assert_eq!(status.kek_fingerprint, fingerprint);
    assert_eq!(status.keys.iter().map(|k| k.current).collect::<Vec<_>>(), vec![false, true]);
}

#[test]
fn a_damaged_keyring_is_read_from_its_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (sealer, _) = open(dir.path(), &EncryptionConfig::default()).unwrap();
    let sealed = sealer.seal(Store::Bundle, b"a@1", b"x");
    std::fs::write(dir.path().join("keyring.json"), b"{ not json").unwrap();
    let (again, _) = open(dir.path(), &EncryptionConfig::default()).unwrap();
    assert_eq!(again.open(Store::Bundle, b"a@1", &sealed).unwrap(), b"x");
}

proptest::proptest! {
    #[test]
    fn opening_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let sealer = Sealer::ephemeral().unwrap();
        let mut sealed = bytes.clone();
        if sealed.len() > 2 { sealed[0] = SEALED; sealed[1] = 1; }
        proptest::prop_assert!(sealer.open(Store::PredictionLog, b"p", &sealed).is_err());
        let _ = AtRest::sealed(Arc::new(sealer)).read(Store::Outbox, b"p", &bytes);
    }
}
