//! Desired states on both backends, and replicas changing them at once on PostgreSQL.

use super::*;
use crate::base::pg::store::testing::{Backing, TestDatabase};

fn sled() -> (Desired, Backing) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (Desired::open(&store).unwrap(), Backing::Sled(dir, store))
}

fn postgres() -> (Desired, Backing) {
    let db = TestDatabase::new();
    (Desired::open_postgres(&db.store()), Backing::Postgres(db))
}

/// A fresh repository on one backend.
type Open = fn() -> (Desired, Backing);

fn model(version: &str) -> DesiredModel {
    DesiredModel {
        name: "bc".into(),
        version: version.into(),
        bundle_sha256: "ab".repeat(32),
        watchdog: None,
        candidate: None,
    }
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("dev-{i:03}")).collect()
}

crate::base::pg::store::testing::on_both_backends!(
    sled, postgres;
    a_batch_is_sealed_with_each_devices_next_seqs_in_order,
    each_change_is_a_new_revision_returned_in_the_order_asked,
    only_states_sealed_half_a_ttl_ago_are_refreshed,
    a_change_that_leaves_a_device_alone_stores_nothing_for_it,
);

fn a_change_that_leaves_a_device_alone_stores_nothing_for_it(open: Open) {
    let (desired, _backing) = open();
    desired.set(&ids(0..1), "bc", Some(&model("1.0.0")), "alice").unwrap();
    let changed = desired
        .modify(&ids(0..2), &|r| {
            r.revision > 0 && {
                r.revision += 1;
                true
            }
        })
        .unwrap();
    assert_eq!(changed.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(), ["dev-000"]);
    assert_eq!(desired.get("dev-001").unwrap(), None, "no record made for the device left alone");
    assert_eq!(desired.all().unwrap().len(), 1);
}

fn each_change_is_a_new_revision_returned_in_the_order_asked(open: Open) {
    let (desired, _backing) = open();
    assert_eq!(desired.get("dev-000").unwrap(), None);
    let devices = vec!["dev-002".to_owned(), "dev-000".to_owned(), "dev-001".to_owned()];
    let set = desired.set(&devices, "bc", Some(&model("1.0.0")), "alice").unwrap();
    assert_eq!(set.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(), ["dev-002", "dev-000", "dev-001"]);
    assert!(
        set.iter()
            .all(|(_, r)| r.revision == 1 && r.updated_by == "alice" && r.models["bc"].version == "1.0.0")
    );

    let updated = desired
        .update(
            &devices[..2],
            "bc",
            |now| now.map(|m| DesiredModel { version: "1.1.0".into(), ..m.clone() }),
            "bob",
        )
        .unwrap();
    assert_eq!(updated.len(), 2);
    assert_eq!(desired.get("dev-002").unwrap().unwrap().revision, 2);
    assert_eq!(desired.get("dev-002").unwrap().unwrap().models["bc"].version, "1.1.0");
    assert_eq!(desired.get("dev-001").unwrap().unwrap().models["bc"].version, "1.0.0");

    let bumped = desired.bump(&["dev-001".to_owned()], "root").unwrap();
    assert_eq!((bumped[0].1.revision, bumped[0].1.models["bc"].version.as_str()), (2, "1.0.0"));
    let removed = desired.set(&["dev-000".to_owned()], "bc", None, "carol").unwrap();
    assert!(removed[0].1.models.is_empty());
    assert_eq!(removed[0].1.revision, 3);

    let all = desired.all().unwrap();
    assert_eq!(
        all.iter().map(|(d, r)| (d.as_str(), r.revision)).collect::<Vec<_>>(),
        [("dev-000", 3), ("dev-001", 2), ("dev-002", 2)]
    );
}

fn only_states_sealed_half_a_ttl_ago_are_refreshed(open: Open) {
    let (desired, _backing) = open();
    let desired = desired.with_ttl(100);
    desired.set(&ids(0..4), "bc", Some(&model("1.0.0")), "alice").unwrap();
    let at = desired.get("dev-000").unwrap().unwrap().updated_at_ms;
    assert!(desired.refresh_due(at + 10_000).unwrap().is_empty(), "10 s into a 100 s TTL");
    let refreshed = desired.refresh_due(at + 60_000).unwrap();
    assert_eq!(refreshed.len(), 4);
    assert!(refreshed.iter().all(|(_, r)| r.revision == 2 && r.refreshed_at_ms == at + 60_000));
    assert!(desired.refresh_due(at + 70_000).unwrap().is_empty(), "just refreshed");
    desired
        .modify(&["dev-003".to_owned()], &|r| {
            r.refreshed_at_ms = at + 100_000;
            true
        })
        .unwrap();
    let refreshed = desired.refresh_due(at + 120_000).unwrap();
    assert_eq!(
        refreshed.iter().map(|(d, r)| (d.as_str(), r.revision)).collect::<Vec<_>>(),
        [("dev-000", 3), ("dev-001", 3), ("dev-002", 3)]
    );
    assert_eq!(desired.get("dev-003").unwrap().unwrap().revision, 2);
}

/// Three replicas changing overlapping devices at once: every change lands, each as its own
/// revision (none lost, none used twice), whatever order the replicas' transactions take.
#[test]
fn replicas_changing_overlapping_devices_lose_no_change() {
    let db = TestDatabase::new();
    let replicas: Vec<Desired> = (0..3).map(|_| Desired::open_postgres(&db.store())).collect();
    let threads: Vec<_> = replicas
        .into_iter()
        .enumerate()
        .map(|(r, desired)| {
            std::thread::spawn(move || {
                for round in 0..10 {
                    // Replica r changes devices r*10 .. r*10+20: each overlaps the next one's.
                    let devices = ids(r * 10..r * 10 + 20);
                    let version = format!("{r}.{round}.0");
                    desired.set(&devices, "bc", Some(&model(&version)), &format!("replica-{r}")).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = Desired::open_postgres(&db.store()).all().unwrap();
    assert_eq!(all.len(), 40);
    for (device, record) in all {
        let i: usize = device[4..].parse().unwrap();
        let changed_by = (0..3).filter(|r| (r * 10..r * 10 + 20).contains(&i)).count() as u64;
        assert_eq!(record.revision, 10 * changed_by, "{device}: every change a revision");
    }
}

#[test]
fn an_unreachable_database_is_an_error_by_name() {
    let db = TestDatabase::new();
    let desired = Desired::open_postgres(&db.store());
    desired.set(&ids(0..2), "bc", Some(&model("1.0.0")), "alice").unwrap();
    db.drop_now();
    for e in [
        desired.get("dev-000").unwrap_err(),
        desired.all().unwrap_err(),
        desired.bump(&ids(0..2), "alice").unwrap_err(),
    ] {
        assert!(e.to_string().contains("postgres://"), "{e}");
    }
}

/// An engine's change checks its lease in the transaction: while the term is the replica's
/// it goes through; once another replica took the lease it is refused and changes nothing,
/// while an operator's change (no fence) still goes through.
#[test]
fn an_engine_deposed_mid_step_changes_no_desired_state() {
    use crate::base::pg::store::Fence;
    use crate::base::pg::store::testing::{later, take_lease};
    let db = TestDatabase::new();
    let store = db.store();
    let operator = Desired::open_postgres(&store);
    let fence = Fence::new("rollouts");
    fence.hold(take_lease(&store, "rollouts", "one"), later());
    let engine = operator.fenced(Some(fence));
    engine.set(&ids(0..2), "bc", Some(&model("1.0.0")), "rollout-engine").unwrap();
    take_lease(&store, "rollouts", "two");
    let refused = engine.set(&ids(0..2), "bc", Some(&model("2.0.0")), "rollout-engine").unwrap_err();
    assert!(matches!(refused, StoreError::Fenced(_)), "{refused}");
    let now = operator.get("dev-000").unwrap().unwrap();
    assert_eq!((now.models["bc"].version.as_str(), now.revision), ("1.0.0", 1));
    operator.set(&ids(0..1), "bc", Some(&model("1.1.0")), "alice").unwrap();
    assert_eq!(operator.get("dev-000").unwrap().unwrap().revision, 2);
}

/// A batch's envelopes carry each device's next seqs (after those already sent it), in the
/// order of the batch, a device named twice getting two; all signed with the online key.
fn a_batch_is_sealed_with_each_devices_next_seqs_in_order(open: Open) {
    let (desired, _keep) = open();
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::load_or_create(dir.path(), &crate::base::secrets::Secrets::clear()).unwrap();
    desired.devices.reserve_outgoing_seqs(&[("dev-000", 5)]).unwrap();
    let records: Vec<(String, DesiredRecord)> = ["dev-000", "dev-001", "dev-000", "dev-002"]
        .iter()
        .map(|d| ((*d).to_owned(), DesiredRecord::default()))
        .collect();
    let online = authority.online_key().public_key();
    let seqs: Vec<u64> = desired
        .seal_many(&authority, &records)
        .unwrap()
        .iter()
        .map(|out| protocol::open(&out.payload, |_| Some(online)).unwrap().seq)
        .collect();
    assert_eq!(seqs, [6, 1, 7, 1]);
}
