//! The model store's unit tests: installs, activation, rollback, the watchdog's boot, repair.
use super::*;
use outpost_shared::bundle::{ModelFile, NanPolicy, TensorSchema, Training};
use outpost_shared::protocol::keys::SigningKey;

fn bundle(key: &SigningKey, version: &str, model: &[u8]) -> Vec<u8> {
    let manifest = Manifest {
        name: "bc".into(),
        version: version.into(),
        created_at: 0,
        model: ModelFile { sha256: String::new(), size: 0 },
        inputs: vec![TensorSchema { name: "x".into(), datatype: "FP32".into(), shape: vec![-1, 1] }],
        outputs: vec![TensorSchema { name: "y".into(), datatype: "FP32".into(), shape: vec![-1, 1] }],
        nan_policy: NanPolicy::Reject,
        training: Training::default(),
        metadata: BTreeMap::new(),
        baseline: None,
        reference: None,
        card: None,
        encryption: None,
    };
    let mut b = Bundle::build(manifest, model.to_vec()).unwrap();
    b.sign(key).unwrap();
    b.to_bytes()
}

/// A store (encrypted at rest) with 1.0.0, 1.1.0 and 1.2.0 installed and activated in turn
/// (1.2.0 active).
fn three_versions(dir: &Path) -> (ModelStore, ReleaseKeys) {
    let sealer = std::sync::Arc::new(crate::at_rest::Sealer::ephemeral().unwrap());
    let store = ModelStore::new(dir, 3, &AtRest::sealed(sealer));
    let (key, _) = SigningKey::generate().unwrap();
    let trusted = ReleaseKeys::any(vec![key.public_key()]);
    for v in ["1.0.0", "1.1.0", "1.2.0"] {
        store.install(&bundle(&key, v, v.as_bytes()), &trusted).unwrap();
        store.activate("bc", v).unwrap();
    }
    (store, trusted)
}

/// Flips bytes in the second half of `path` (what a worn card does).
fn flip(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let half = bytes.len() / 2;
    for i in (half..bytes.len()).step_by(3) {
        bytes[i] ^= 0xA5;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn sealed_bundles_hold_no_model_bytes_on_disk_and_read_back_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (store, trusted) = three_versions(dir.path());
    let path = store.bundle_path("bc", "1.1.0").unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert!(crate::at_rest::is_sealed(&on_disk));
    assert_ne!(&on_disk[..2], &[0x1f, 0x8b], "a gzip stream on disk");
    assert!(!on_disk.windows(5).any(|w| w == b"1.1.0"), "manifest bytes in the clear");
    assert_eq!(store.read("bc", "1.1.0", &trusted).unwrap().model, b"1.1.0");
    // Installing the same version again is a no-op; a store without the keys cannot read it.
    let (key, _) = SigningKey::generate().unwrap();
    assert!(matches!(
        store.install(&bundle(&key, "1.1.0", b"other"), &ReleaseKeys::any(vec![key.public_key()])),
        Err(StoreError::Conflict { .. })
    ));
    let keyless = ModelStore::new(dir.path(), 3, &AtRest::clear());
    assert!(matches!(keyless.read("bc", "1.1.0", &trusted), Err(StoreError::Unreadable { .. })));
}

#[test]
fn a_healthy_store_needs_no_repair() {
    let dir = tempfile::tempdir().unwrap();
    let (store, trusted) = three_versions(dir.path());
    let before = store.state().unwrap();
    assert_eq!(store.repair(&trusted).unwrap(), vec![]);
    assert_eq!(store.state().unwrap(), before);
}

#[test]
fn a_damaged_state_is_restored_from_its_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (store, trusted) = three_versions(dir.path());
    let active = store.state().unwrap().models["bc"].clone();
    flip(&store.state_path());
    assert!(matches!(store.state(), Err(StoreError::Corrupt { .. })));
    let repairs = store.repair(&trusted).unwrap();
    assert!(matches!(repairs.as_slice(), [Repair::StateReplaced { restored: true, .. }]), "{repairs:?}");
    assert_eq!(store.state().unwrap().models["bc"], active, "the same versions, history included");
    assert_eq!(std::fs::read_dir(store.dir().join("quarantine")).unwrap().count(), 1);
    // Both copies damaged: the store starts empty rather than not at all.
    flip(&store.state_path());
    flip(&store.backup_path());
    let repairs = store.repair(&trusted).unwrap();
    assert!(matches!(repairs.as_slice(), [Repair::StateReplaced { restored: false, .. }]), "{repairs:?}");
    assert!(store.state().unwrap().models.is_empty());
}

#[test]
fn a_damaged_active_bundle_is_quarantined_and_the_newest_good_version_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (store, trusted) = three_versions(dir.path());
    flip(&store.bundle_path("bc", "1.2.0").unwrap());
    let generation = store.state().unwrap().generation;
    let repairs = store.repair(&trusted).unwrap();
    assert_eq!(repairs.len(), 2, "{repairs:?}");
    assert!(matches!(&repairs[0], Repair::BundleQuarantined { version, .. } if version == "1.2.0"));
    assert_eq!(
        repairs[1],
        Repair::Fallback { name: "bc".into(), from: "1.2.0".into(), to: Some("1.1.0".into()) }
    );
    let state = store.state().unwrap();
    assert_eq!(state.models["bc"].active, "1.1.0");
    assert_eq!(state.models["bc"].history, ["1.0.0"]);
    assert!(state.generation > generation, "a serving agent sees the change");
    assert!(!store.installed("bc").contains(&"1.2.0".to_owned()));
    assert!(store.read("bc", "1.1.0", &trusted).is_ok());
    // Every version damaged: the model waits for a good bundle.
    for v in ["1.0.0", "1.1.0"] {
        flip(&store.bundle_path("bc", v).unwrap());
    }
    let repairs = store.repair(&trusted).unwrap();
    assert!(repairs.contains(&Repair::Fallback { name: "bc".into(), from: "1.1.0".into(), to: None }));
    assert!(store.state().unwrap().models.is_empty());
}

#[test]
fn a_version_that_keeps_crashing_the_agent_is_switched_back_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path(), 3, &AtRest::clear());
    let (key, _) = SigningKey::generate().unwrap();
    let trusted = ReleaseKeys::any(vec![key.public_key()]);
    for v in ["1.0.0", "1.1.0"] {
        store.install(&bundle(&key, v, v.as_bytes()), &trusted).unwrap();
    }
    let policy = WatchdogPolicy { max_crashes: 2, probation_secs: 60, ..WatchdogPolicy::default() };
    // The first version has nothing to go back to: no probation.
    store.activate_watched("bc", "1.0.0", Some(policy), 0).unwrap();
    assert_eq!(store.state().unwrap().models["bc"].probation, None);
    store.activate_watched("bc", "1.1.0", Some(policy), 1_000).unwrap();
    assert!(store.state().unwrap().models["bc"].probation.as_ref().is_some_and(|p| p.running));
    // A clean exit is not a crash.
    store.clean_exit().unwrap();
    assert_eq!(store.boot(2_000).unwrap(), vec![]);
    // Two crashes are allowed, the third switches back.
    for crashes in 1..=2 {
        let actions = store.boot(3_000).unwrap();
        assert_eq!(
            actions,
            vec![BootAction::Crashed { name: "bc".into(), version: "1.1.0".into(), crashes, allowed: 2 }]
        );
        assert_eq!(store.state().unwrap().models["bc"].active, "1.1.0");
    }
    let generation = store.state().unwrap().generation;
    let actions = store.boot(4_000).unwrap();
    assert_eq!(
        actions,
        vec![BootAction::RolledBack {
            name: "bc".into(),
            from: "1.1.0".into(),
            to: "1.0.0".into(),
            crashes: 3
        }]
    );
    let state = store.state().unwrap();
    assert_eq!((state.models["bc"].active.as_str(), &state.models["bc"].probation), ("1.0.0", &None));
    assert!(state.generation > generation);
    // A probation past its time ends at start, crash or not.
    store.activate_watched("bc", "1.1.0", Some(policy), 10_000).unwrap();
    assert_eq!(store.boot(10_000 + 61_000).unwrap().len(), 1);
    assert_eq!(store.state().unwrap().models["bc"].probation, None);
    // The running watchdog ends one either way.
    store.activate("bc", "1.0.0").unwrap();
    store.activate_watched("bc", "1.1.0", Some(policy), 20_000).unwrap();
    let back = store.end_probation("bc", "1.1.0", true).unwrap().unwrap();
    assert_eq!((back.from.as_str(), back.to.as_str()), ("1.1.0", "1.0.0"));
    assert_eq!(store.end_probation("bc", "1.1.0", true).unwrap(), None);
}

#[test]
fn installs_activates_rolls_back_and_keeps_the_last_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path(), 3, &AtRest::clear());
    let (key, _) = SigningKey::generate().unwrap();
    let trusted = ReleaseKeys::any(vec![key.public_key()]);
    for v in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"] {
        store.install(&bundle(&key, v, v.as_bytes()), &trusted).unwrap();
        store.activate("bc", v).unwrap();
    }
    assert_eq!(store.installed("bc"), ["1.1.0", "1.2.0", "1.3.0"]);
    let state = store.state().unwrap();
    assert_eq!(
        state.models["bc"],
        StoredModel {
            active: "1.3.0".into(),
            history: vec!["1.1.0".into(), "1.2.0".into()],
            probation: None,
            candidate: None,
            release_floor: Some("1.3.0".into()),
        }
    );
    assert_eq!(state.generation, 4);
    let back = store.rollback(None, 2).unwrap();
    assert_eq!((back.from.as_str(), back.to.as_str()), ("1.3.0", "1.1.0"));
    assert!(matches!(store.rollback(Some("bc"), 1), Err(StoreError::NoHistory { available: 0, .. })));
    assert_eq!(store.read("bc", "1.1.0", &trusted).unwrap().model, b"1.1.0");
}

#[test]
fn refuses_other_bytes_for_an_installed_version_and_untrusted_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path(), 3, &AtRest::clear());
    let (key, _) = SigningKey::generate().unwrap();
    let (stranger, _) = SigningKey::generate().unwrap();
    let first = bundle(&key, "1.0.0", b"a");
    store.install(&first, &ReleaseKeys::any(vec![key.public_key()])).unwrap();
    store.install(&first, &ReleaseKeys::any(vec![key.public_key()])).unwrap();
    // Signed again by another key: the same version.
    let (offline, _) = SigningKey::generate().unwrap();
    let mut twice = Bundle::parse(&first).unwrap();
    twice.sign(&offline).unwrap();
    store.install(&twice.to_bytes(), &ReleaseKeys::any(vec![offline.public_key()])).unwrap();
    assert!(matches!(
        store.install(&bundle(&key, "1.0.0", b"b"), &ReleaseKeys::any(vec![key.public_key()])),
        Err(StoreError::Conflict { .. })
    ));
    let err = store
        .install(&bundle(&stranger, "1.1.0", b"c"), &ReleaseKeys::any(vec![key.public_key()]))
        .unwrap_err();
    assert!(err.to_string().contains(stranger.key_id()), "{err}");
    assert!(store.installed("bc") == ["1.0.0"]);
    assert!(matches!(store.activate("bc", "9.9.9"), Err(StoreError::NotInstalled { .. })));
}

#[test]
fn an_import_cannot_activate_a_release_older_than_the_newest_one_told_current() {
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(dir.path(), 3, &AtRest::clear());
    let (key, _) = SigningKey::generate().unwrap();
    let trusted = ReleaseKeys::any(vec![key.public_key()]);
    for v in ["1.0.0", "1.1.0"] {
        store.install(&bundle(&key, v, v.as_bytes()), &trusted).unwrap();
    }
    store.activate_imported("bc", "1.0.0").unwrap();
    store.activate_imported("bc", "1.1.0").unwrap();
    match store.activate_imported("bc", "1.0.0") {
        Err(StoreError::OlderThanFloor { version, floor, .. }) => {
            assert_eq!((version.as_str(), floor.as_str()), ("1.0.0", "1.1.0"))
        }
        other => panic!("a replayed older bundle was activated: {other:?}"),
    }
    assert_eq!(store.state().unwrap().models["bc"].active, "1.1.0");
    // An explicit rollback goes back, and does not lower the floor.
    store.rollback(Some("bc"), 1).unwrap();
    let model = store.state().unwrap().models["bc"].clone();
    assert_eq!((model.active.as_str(), model.release_floor.as_deref()), ("1.0.0", Some("1.1.0")));
    // Importing what is already active is a no-op, not a refusal; a coordinator's desired state
    // (a new revision) may name any version.
    store.activate_imported("bc", "1.0.0").unwrap();
    store.activate("bc", "1.1.0").unwrap();
    store.activate("bc", "1.0.0").unwrap();
}
