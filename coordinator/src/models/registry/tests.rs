//! The registry's unit tests: pushes, signatures, stages, policies, purges.
use super::*;
use crate::base::pg::store::testing::{Backing, TestDatabase};
use crate::models::packaging::{BuildSpec, build};

fn fixture(stem: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(format!("{stem}.onnx"))
}

fn bundle(stem: &str, version: &str) -> Vec<u8> {
    let spec = BuildSpec {
        model: fixture(stem),
        name: "bc".into(),
        version: version.into(),
        ..BuildSpec::default()
    };
    build(&spec, 0).unwrap().0.to_bytes()
}

fn registry() -> (Backing, Registry, SigningKey) {
    sled()
}

fn sled() -> (Backing, Registry, SigningKey) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let registry = Registry::open(&store, dir.path()).unwrap();
    (Backing::Sled(dir, store), registry, SigningKey::generate().unwrap().0)
}

fn postgres() -> (Backing, Registry, SigningKey) {
    let db = TestDatabase::new();
    let registry = Registry::open_postgres(&db.store());
    (Backing::Postgres(db), registry, SigningKey::generate().unwrap().0)
}

/// A fresh registry on one backend.
type Open = fn() -> (Backing, Registry, SigningKey);

crate::base::pg::store::testing::on_both_backends!(
    sled, postgres;
    versions_are_immutable_and_signed_on_push,
    only_validated_versions_advance_and_production_steps_down,
    purge_keeps_what_rollback_needs,
    a_models_thresholds_are_kept,
);

fn a_models_thresholds_are_kept(open: Open) {
    let (_backing, registry, _) = open();
    assert_eq!(registry.policy("bc").unwrap(), crate::models::validation::Policy::default());
    let strict = crate::models::validation::Policy { min_accuracy: Some(0.97), ..Default::default() };
    registry.set_policy("bc", &strict).unwrap();
    registry.set_policy("bc", &strict).unwrap();
    assert_eq!(registry.policy("bc").unwrap(), strict);
    assert!(matches!(registry.set_policy("b c", &strict), Err(RegistryError::Invalid(_))));
}

fn versions_are_immutable_and_signed_on_push(open: Open) {
    let (_backing, registry, key) = open();
    let first = registry.push(&bundle("breast_cancer-1.0.0", "1.0.0"), "alice", &key).unwrap();
    assert!(first.created);
    assert_eq!(first.record.signed_by, [key.key_id()]);
    let stored = registry.artifact(&first.record.bundle_sha256).unwrap();
    Bundle::open(&stored, &[key.public_key()]).unwrap();
    // The same model again (a new build, other manifest bytes) is a no-op.
    assert!(!registry.push(&bundle("breast_cancer-1.0.0", "1.0.0"), "bob", &key).unwrap().created);
    let other = registry.push(&bundle("breast_cancer-1.1.0", "1.0.0"), "bob", &key);
    assert!(matches!(other, Err(RegistryError::Conflict { .. })), "{other:?}");
    assert!(matches!(registry.artifact("nope"), Err(RegistryError::Invalid(_))));
}

#[test]
fn rejects_forged_and_untrusted_signatures_on_push() {
    let (_backing, registry, key) = registry();
    let (offline, _) = SigningKey::generate().unwrap();
    let (stranger, _) = SigningKey::generate().unwrap();
    let registry = registry.trusting(vec![offline.public_key()]);
    let signed_with = |keys: &[&SigningKey], v: &str| {
        let mut b = Bundle::parse(&bundle("breast_cancer-1.0.0", v)).unwrap();
        for k in keys {
            b.sign(k).unwrap();
        }
        b
    };
    // The release key's id with 64 bytes of `A`: refused, naming the key, nothing stored.
    let mut forged = signed_with(&[&key], "1.0.0");
    forged.signatures[0].signature = [b'A'; 64];
    let err = registry.push(&forged.to_bytes(), "mallory", &key).unwrap_err();
    assert!(matches!(err, RegistryError::Signature(_)) && err.to_string().contains(key.key_id()), "{err}");
    // A key the registry does not trust, even beside a good one.
    let err = registry.push(&signed_with(&[&offline, &stranger], "1.0.0").to_bytes(), "m", &key).unwrap_err();
    assert!(err.to_string().contains(stranger.key_id()), "{err}");
    assert!(registry.list().unwrap().is_empty(), "a refused bundle is not stored");
    // A trusted offline signature is checked and listed, with the registry's own after it.
    let pushed = registry.push(&signed_with(&[&offline], "1.0.0").to_bytes(), "alice", &key).unwrap();
    assert_eq!(pushed.record.signed_by, [offline.key_id(), key.key_id()]);
}

#[test]
fn with_the_release_key_offline_only_offline_signed_bundles_register_and_the_registry_signs_none() {
    let (_backing, registry, key) = registry();
    let (offline, _) = SigningKey::generate().unwrap();
    let registry = registry.trusting(vec![offline.public_key()]).signing_on_push(false);
    let err = registry.push(&bundle("breast_cancer-1.0.0", "1.0.0"), "alice", &key).unwrap_err();
    assert!(err.to_string().contains("sign it offline with `outpostctl bundle sign`"), "{err}");
    // Signed by the coordinator's own release key only is not enough either.
    let mut by_release = Bundle::parse(&bundle("breast_cancer-1.0.0", "1.0.0")).unwrap();
    by_release.sign(&key).unwrap();
    assert!(registry.push(&by_release.to_bytes(), "alice", &key).is_err());
    let mut signed = Bundle::parse(&bundle("breast_cancer-1.0.0", "1.0.0")).unwrap();
    signed.sign(&offline).unwrap();
    let pushed = registry.push(&signed.to_bytes(), "alice", &key).unwrap();
    assert_eq!(pushed.record.signed_by, [offline.key_id()], "the registry added a signature");
    let stored = registry.artifact(&pushed.record.bundle_sha256).unwrap();
    assert!(Bundle::open(&stored, &[key.public_key()]).is_err(), "the release key signed it after all");
    Bundle::open(&stored, &[offline.public_key()]).unwrap();
}

#[test]
fn the_trust_roots_release_keys_sign_pushes_and_a_key_a_new_root_drops_no_longer_does() {
    let (_backing, registry, key) = registry();
    let (second, _) = SigningKey::generate().unwrap();
    let signed = |version: &str| {
        let mut b = Bundle::parse(&bundle("breast_cancer-1.0.0", version)).unwrap();
        b.sign(&second).unwrap();
        b.to_bytes()
    };
    assert!(registry.push(&signed("1.0.0"), "alice", &key).is_err(), "an unknown signer was taken");
    registry.follow_root_release(&[key.public_key(), second.public_key()]);
    let pushed = registry.push(&signed("1.0.0"), "alice", &key).unwrap();
    assert_eq!(pushed.record.signed_by, [second.key_id(), key.key_id()]);
    // The next root drops it: refused from then on, without a restart.
    registry.follow_root_release(&[key.public_key()]);
    let err = registry.push(&signed("1.1.0"), "alice", &key).unwrap_err().to_string();
    assert!(err.contains(second.key_id()), "{err}");
}

fn only_validated_versions_advance_and_production_steps_down(open: Open) {
    let (_backing, registry, key) = open();
    for (stem, v) in [("breast_cancer-1.0.0", "1.0.0"), ("breast_cancer-1.1.0", "1.1.0")] {
        registry.push(&bundle(stem, v), "alice", &key).unwrap();
    }
    let refused = registry.transition("bc", "1.0.0", Stage::Production, "alice", "");
    assert!(matches!(refused, Err(RegistryError::Refused(_))), "{refused:?}");
    for v in ["1.0.0", "1.1.0"] {
        let r = registry.set_validation("bc", v, serde_json::json!({}), true, "ci").unwrap();
        assert_eq!(r.stage, Stage::Validated);
    }
    registry.transition("bc", "1.0.0", Stage::Production, "alice", "").unwrap();
    registry.transition("bc", "1.1.0", Stage::Production, "alice", "").unwrap();
    assert_eq!(registry.get("bc", "1.0.0").unwrap().stage, Stage::Archived);
    assert_eq!(registry.production("bc").unwrap().unwrap().version, "1.1.0");
    let history: Vec<(Option<Stage>, Stage, String)> =
        registry.get("bc", "1.0.0").unwrap().transitions.into_iter().map(|t| (t.from, t.to, t.by)).collect();
    assert_eq!(history.len(), 4, "{history:?}");
    assert_eq!(history[3], (Some(Stage::Production), Stage::Archived, "alice".into()));
}

fn purge_keeps_what_rollback_needs(open: Open) {
    let (_backing, registry, key) = open();
    let versions = ["1.0.0", "1.0.1", "1.0.2", "1.0.3", "1.0.4"];
    for v in versions {
        registry.push(&bundle("breast_cancer-1.0.0", v), "alice", &key).unwrap();
        registry.set_validation("bc", v, serde_json::json!({}), true, "ci").unwrap();
    }
    let refused = registry.purge("bc", "1.0.4");
    assert!(
        matches!(refused, Err(RegistryError::Refused(ref m)) if m.contains("only archived")),
        "{refused:?}"
    );
    for v in versions {
        registry.transition("bc", v, Stage::Production, "alice", "").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // 1.0.4 serves; 1.0.3, 1.0.2 were the previous production versions: kept.
    let kept = registry.purge("bc", "1.0.2");
    assert!(matches!(kept, Err(RegistryError::Refused(ref m)) if m.contains("last 3")), "{kept:?}");
    let purged = registry.purge("bc", "1.0.1").unwrap();
    assert!(matches!(registry.get("bc", "1.0.1"), Err(RegistryError::NotFound(_))));
    // The same model bytes under another version share nothing: each build is its own artifact.
    assert!(matches!(registry.artifact(&purged.bundle_sha256), Err(RegistryError::NotFound(_))));
}

#[test]
fn latency_is_compared_with_production_timed_in_the_same_run() {
    use crate::models::validation::{Report, ValidateOptions};
    let (_backing, registry, key) = registry();
    for v in ["1.0.0", "1.1.0"] {
        registry.push(&bundle("breast_cancer-1.0.0", v), "alice", &key).unwrap();
    }
    let dataset = std::fs::read(fixture("breast_cancer_validation").with_extension("csv")).unwrap();
    let options =
        ValidateOptions { label: "label".into(), segment: Some("site".into()), ..ValidateOptions::default() };
    let (report, _) = registry.validate("bc", "1.0.0", &dataset, &options, "ci").unwrap();
    assert!(report.passed, "{:?}", report.failures);
    assert_eq!(report.baseline_latency, None, "no production version to time");
    // Production's figures as if recorded on an idle day: p99 a thousandth of a millisecond.
    let mut quiet = report.clone();
    quiet.latency.p99_ms = 0.001;
    registry.set_validation("bc", "1.0.0", serde_json::to_value(&quiet).unwrap(), true, "ci").unwrap();
    registry.transition("bc", "1.0.0", Stage::Production, "alice", "").unwrap();

    // The same model as 1.1.0, with no slack: against the recorded 0.001 ms it would fail; timed
    // beside production in the same loop it is judged against what this machine does now.
    let strict = ValidateOptions { max_p99_ratio: Some(1.5), p99_slack_ms: Some(0.05), ..options.clone() };
    let (report, _) = registry.validate("bc", "1.1.0", &dataset, &strict, "ci").unwrap();
    let fresh = report.baseline_latency.clone().expect("production timed in the same run");
    let p99 = report.regression.iter().find(|c| c.check == "p99_ms").unwrap();
    assert_eq!(p99.production, fresh.p99_ms, "{report:#?}");
    assert!(fresh.p99_ms > 0.001, "{fresh:?}");
    assert_eq!(fresh.runs, report.latency.runs);

    // A real regression still fails: no candidate is within zero times production plus nothing.
    let impossible = ValidateOptions { max_p99_ratio: Some(0.0), p99_slack_ms: Some(0.0), ..options };
    let (report, _) = registry.validate("bc", "1.1.0", &dataset, &impossible, "ci").unwrap();
    assert!(!report.passed);
    assert!(report.failures.iter().any(|f| f.starts_with("p99_ms ")), "{:?}", report.failures);
    let stored: Report =
        serde_json::from_value(registry.get("bc", "1.1.0").unwrap().validation.unwrap()).unwrap();
    assert_eq!(stored.baseline_latency, report.baseline_latency);
}

/// Five replicas each promote another version of one model at once: the promotions take turns
/// on the model's rows, so exactly one version is in production after, and each of the others
/// was archived by the promotion that followed it (none is left in production beside it).
#[test]
fn replicas_promoting_at_once_leave_one_production_version() {
    let db = TestDatabase::new();
    let key = SigningKey::generate().unwrap().0;
    let first = Registry::open_postgres(&db.store());
    let versions = ["1.0.0", "1.0.1", "1.0.2", "1.0.3", "1.0.4"];
    for v in versions {
        first.push(&bundle("breast_cancer-1.0.0", v), "alice", &key).unwrap();
        first.set_validation("bc", v, serde_json::json!({}), true, "ci").unwrap();
    }
    let threads: Vec<_> = versions
        .iter()
        .map(|v| {
            let replica = Registry::open_postgres(&db.store());
            let v = (*v).to_owned();
            std::thread::spawn(move || replica.transition("bc", &v, Stage::Production, "ops", "").unwrap())
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = first.versions("bc").unwrap();
    let production: Vec<&str> =
        all.iter().filter(|r| r.stage == Stage::Production).map(|r| r.version.as_str()).collect();
    assert_eq!(production.len(), 1, "{production:?}");
    for r in &all {
        let promoted = r.transitions.iter().filter(|t| t.to == Stage::Production).count();
        assert_eq!(promoted, 1, "{}: promoted once: {:?}", r.version, r.transitions);
        if r.stage == Stage::Archived {
            assert_eq!(r.transitions.last().unwrap().from, Some(Stage::Production), "{}", r.version);
        }
    }
}

/// An artifact pushed through one replica is served by another, byte for byte; one larger than
/// a chunk is stored in pieces and read whole; a lost piece is named, never served short.
#[test]
fn artifacts_are_shared_by_replicas_and_a_lost_chunk_is_named() {
    let db = TestDatabase::new();
    let key = SigningKey::generate().unwrap().0;
    let (one, two) = (Registry::open_postgres(&db.store()), Registry::open_postgres(&db.store()));
    let pushed = one.push(&bundle("breast_cancer-1.0.0", "1.0.0"), "alice", &key).unwrap();
    let served = two.artifact(&pushed.record.bundle_sha256).unwrap();
    assert_eq!(sha256_hex(&served), pushed.record.bundle_sha256);
    assert_eq!(served.len() as u64, pushed.record.bundle_size);

    // 2.5 MiB that gzip cannot shrink: three chunks.
    let records = RegistryStore::open_postgres(&db.store());
    let mut noise = vec![0u8; 5 * 512 * 1024];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut noise).unwrap();
    let sha = sha256_hex(&noise);
    records.put_blob(&sha, &noise).unwrap();
    records.put_blob(&sha, &noise).unwrap();
    assert_eq!(records.blob(&sha).unwrap().unwrap(), noise);
    assert_eq!(records.blob(&"0".repeat(64)).unwrap(), None);
    db.store()
        .execute_batch(&format!("DELETE FROM outpost_blobs WHERE sha256 = '{sha}' AND chunk = 1"))
        .unwrap();
    let err = records.blob(&sha).unwrap_err().to_string();
    assert!(err.contains("2 of its 3 chunks are stored"), "{err}");
    // Nothing names it: a purge's sweep removes it.
    assert!(records.remove_unused_blob(&sha).unwrap());
    assert_eq!(records.blob(&sha).unwrap(), None);
    assert!(!records.remove_unused_blob(&pushed.record.bundle_sha256).unwrap(), "1.0.0 names it");
}
