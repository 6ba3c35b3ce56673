//! Unit tests of the copy from sled into PostgreSQL (the machine's real PostgreSQL, a database
//! per test): records the end-to-end test (`tests/tests/migrate.rs`) does not make — revocations,
//! release-key marks, sessions, alerts, retraining runs, shadow windows — read back through the
//! same repositories on PostgreSQL; a copied seq is still taken; a record that does not decode
//! (a flipped bit) or a target that holds records leaves the target as it was.
use std::collections::BTreeMap;

use outpost_shared::protocol::messages::{ShadowReport, ShadowWindow};

use super::*;
use crate::base::pg::store::Fence;
use crate::base::pg::store::testing::TestDatabase;
use crate::fleet::devices::{DeviceRecord, Devices, Stored, TokenRecord};
use crate::http::dashboard::sessions::Sessions;
use crate::monitoring::slo::Slos;
use crate::ops::alerts::{AlertRecord, AlertStore};
use crate::ops::retraining::{RunRecord, RunStore};

fn token() -> TokenRecord {
    TokenRecord {
        labels: BTreeMap::new(),
        created_at_ms: 0,
        expires_at_ms: u64::MAX,
        used_by: None,
        used_at_ms: None,
    }
}

fn enrol(devices: &Devices, id: &str, key: u8) {
    devices.add_token(id, &token()).unwrap();
    devices.enrol(id, |_| DeviceRecord::new(id, &[key; 32], BTreeMap::new())).unwrap().unwrap();
}

fn alert() -> AlertRecord {
    AlertRecord {
        labels: BTreeMap::from([("alertname".to_owned(), "drift".to_owned())]),
        summary: "bc drifted".to_owned(),
        devices: vec!["d1".into()],
        starts_at_ms: 1,
        ends_at_ms: None,
        webhook_notified: true,
        alertmanager_resolved: false,
    }
}

fn shadow() -> ShadowReport {
    ShadowReport {
        window_start_ms: 1_000,
        window_end_ms: 61_000,
        models: vec![ShadowWindow {
            model: "bc".into(),
            version: "1.1.0".into(),
            primary: "1.0.0".into(),
            compared: 40,
            agreed: 37,
        }],
    }
}

/// A sled store holding one of each record below, and its data directory.
fn populated() -> (tempfile::TempDir, Store, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let devices = Devices::open(&store).unwrap();
    enrol(&devices, "d1", 1);
    enrol(&devices, "d2", 2);
    let bump = |r: &mut DeviceRecord| r.counts.reports += 1;
    assert_eq!(devices.store_envelope("d1", 1 << 63, b"high", bump).unwrap(), Stored::New);
    devices.revoke("d2", "admin").unwrap().unwrap();
    // A device enrolled when one key signed everything (marked by an older coordinator).
    store.tree("legacy_control").unwrap().insert(b"d1", &[][..]).unwrap();
    let (session, _) = Sessions::open(&store).unwrap().start(&"ab".repeat(32), 1_000, 43_200_000).unwrap();
    AlertStore::open(&store).unwrap().put(&alert()).unwrap();
    RunStore::open(&store).unwrap().put(&RunRecord::started("bc", "drift", 42)).unwrap();
    Slos::open(&store).unwrap().put_shadow("d1", &shadow()).unwrap();
    store.flush().unwrap();
    (dir, store, session)
}

#[test]
fn every_record_reads_back_the_same_through_the_repositories_on_postgresql() {
    let (dir, store, session) = populated();
    let db = TestDatabase::new();
    let pg = db.store();
    let copied = copy_all(&store, dir.path(), &pg).unwrap();
    assert_eq!(copied["outpost_devices"], 2);
    assert_eq!(copied["outpost_revocations"], 1);

    let (from, to) = (Devices::open(&store).unwrap(), Devices::open_postgres(&pg));
    assert_eq!(to.revocations().unwrap(), from.revocations().unwrap());
    assert_eq!(to.get("d1").unwrap(), from.get("d1").unwrap());
    assert_eq!(to.get_by_key(&from.get("d2").unwrap().unwrap().key_id).unwrap().unwrap().id, "d2");
    assert!(to.control_by_release_key("d1").unwrap() && !to.control_by_release_key("d2").unwrap());
    // The copied seq (past i64::MAX) is taken: the same bytes are a replay, others a conflict.
    let bump = |r: &mut DeviceRecord| r.counts.reports += 1;
    assert_eq!(to.store_envelope("d1", 1 << 63, b"high", bump).unwrap(), Stored::Duplicate);
    assert_eq!(to.store_envelope("d1", 1 << 63, b"other", bump).unwrap(), Stored::Conflict);

    let now = 2_000;
    assert_eq!(
        Sessions::open_postgres(&pg).get(&session, now).unwrap(),
        Sessions::open(&store).unwrap().get(&session, now).unwrap()
    );
    let fence = Fence::new("alerts");
    assert_eq!(AlertStore::open_postgres(&pg, fence).all().unwrap(), vec![alert()]);
    assert_eq!(
        RunStore::open_postgres(&pg).runs("bc").unwrap(),
        RunStore::open(&store).unwrap().runs("bc").unwrap()
    );
    let all = |_: &str, _: &str| true;
    assert_eq!(Slos::open_postgres(&pg).shadow_where("bc", 0, u64::MAX / 2, all).unwrap(), (40, 37));
}

#[test]
fn a_record_that_does_not_decode_is_named_and_nothing_is_copied() {
    let (dir, store, _) = populated();
    // A worn card's flipped bit: the device record is no longer JSON.
    let devices = store.tree("devices").unwrap();
    let mut raw = devices.get(b"d1").unwrap().unwrap().to_vec();
    raw[0] ^= 0x40;
    devices.insert(b"d1", raw).unwrap();
    let db = TestDatabase::new();
    let pg = db.store();
    let err = copy_all(&store, dir.path(), &pg).unwrap_err().message;
    assert!(err.contains("record `d1` of tree `devices` cannot be copied: not a JSON record"), "{err}");
    assert!(err.contains("nothing was copied"), "{err}");
    let tokens: i64 =
        pg.with(|c| c.query_one("SELECT count(*) FROM outpost_tokens", &[])?.try_get(0)).unwrap();
    assert_eq!(tokens, 0, "the tokens copied before the bad record were rolled back");
}

/// A crash between an audit group's write and its head's move leaves lines past the head: they
/// were never acknowledged, and the copy ends at the head as sled's chain does.
#[test]
fn the_audit_log_is_copied_up_to_its_recorded_head() {
    let (dir, store, _) = populated();
    let audit = AuditLog::open(dir.path(), &store).unwrap();
    let entries: Vec<_> = (0..3)
        .map(|i| audit.record("admin", "admin", "deploy", &format!("bc@1.0.{i}"), "ok", "").unwrap())
        .collect();
    drop(audit);
    let second = &entries[1];
    let head = format!("{} {}", second.seq, second.hash);
    store.tree("meta").unwrap().insert(crate::base::audit::HEAD_KEY, head.as_bytes()).unwrap();
    let db = TestDatabase::new();
    let pg = db.store();
    assert_eq!(copy_all(&store, dir.path(), &pg).unwrap()["outpost_audit"], 2);
    let on_pg = AuditLog::open_postgres(&pg).unwrap();
    assert_eq!(on_pg.verify().unwrap(), 2);
    assert_eq!(on_pg.tail(10).unwrap().last().unwrap().hash, second.hash);
}

#[test]
fn a_target_that_holds_records_is_refused_naming_them() {
    let (dir, store, _) = populated();
    let db = TestDatabase::new();
    let pg = db.store();
    copy_all(&store, dir.path(), &pg).unwrap();
    let err = copy_all(&store, dir.path(), &pg).unwrap_err().message;
    assert!(err.contains("already holds records (outpost_tokens: 2, outpost_devices: 2"), "{err}");
}

#[test]
fn a_tree_this_version_does_not_know_is_refused_by_name() {
    let (_dir, store, _) = populated();
    store.tree("from_the_future").unwrap().insert(b"k", &b"v"[..]).unwrap();
    let err = prepare(&store).unwrap_err().message;
    assert!(err.contains("cannot migrate (from_the_future)"), "{err}");
}

#[test]
fn from_must_name_a_sled_data_directory() {
    assert!(sled_dir("/var/lib/outpost").unwrap_err().usage);
    let dir = tempfile::tempdir().unwrap();
    let err = sled_dir(&format!("sled://{}", dir.path().display())).unwrap_err();
    assert!(err.usage && err.message.contains("no state/"), "{}", err.message);
}
