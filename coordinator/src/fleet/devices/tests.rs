//! Unit tests of the device store: tokens, enrolment, envelopes, revocation, key roles, and
//! retention. Each behaviour runs on both backends (`on_sled::…`, `on_postgres::…`, the latter
//! against the real PostgreSQL of `TEST_POSTGRES_URL`, a database per test).
use super::*;
use crate::base::pg::store::testing::TestDatabase;
use std::collections::BTreeMap;

fn device(id: &str, key: &str) -> DeviceRecord {
    DeviceRecord {
        key_id: key.into(),
        ..DeviceRecord::new(id, &[key.bytes().fold(0, u8::wrapping_add); 32], BTreeMap::new())
    }
}

/// What keeps a test's store alive, and how to reach behind the repository.
#[allow(clippy::large_enum_variant)]
enum Backing {
    Sled(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] TestDatabase, PgStore),
}

fn sled() -> (Devices, Backing) {
    let dir = tempfile::tempdir().unwrap();
    (Devices::open(&Store::open(dir.path()).unwrap()).unwrap(), Backing::Sled(dir))
}

fn postgres() -> (Devices, Backing) {
    let db = TestDatabase::new();
    let store = db.store();
    (Devices::open_postgres(&store), Backing::Postgres(db, store))
}

/// Runs each named behaviour `fn(&Devices, &Backing)` once on each backend.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sled {
            $(#[test] fn $name() { let (devices, backing) = super::sled(); super::$name(&devices, &backing); })*
        }
        mod on_postgres {
            $(#[test] fn $name() { let (devices, backing) = super::postgres(); super::$name(&devices, &backing); })*
        }
    };
}

on_both!(
    a_token_enrols_exactly_once_and_expires,
    envelopes_are_stored_once_and_counted,
    a_revoked_device_leaves_the_targets_stays_revoked_and_cannot_enrol_again,
    old_envelopes_are_pruned_as_a_prefix_and_their_seqs_stay_taken,
    envelopes_from_before_arrival_times_go_by_their_sent_time,
    a_presence_from_an_older_session_is_a_replay,
    a_device_marked_for_the_release_key_loses_the_mark_when_it_enrols_again,
    any_u64_seq_is_stored_in_order,
    a_record_holding_any_string_a_device_sent_is_stored,
    a_batch_is_stored_in_order_each_seq_once,
    outgoing_seqs_are_reserved_in_runs_and_records_read_together,
    an_envelope_that_brings_an_event_is_published,
);

/// `devices` with each (token, device, key id) of `enrolled` enrolled, and a sealer of
/// envelopes `(seq, sent_at_ms)` under one signing key.
fn enrolled_with_signer(devices: &Devices, enrolled: &[(&str, &str, &str)]) -> impl Fn(u64, u64) -> Vec<u8> {
    for (t, d, k) in enrolled {
        devices.add_token(t, &token(u64::MAX)).unwrap();
        devices.enrol(t, |_| device(d, k)).unwrap().unwrap();
    }
    let (key, _) = outpost_shared::protocol::keys::SigningKey::generate().unwrap();
    move |seq: u64, sent_at_ms: u64| outpost_shared::protocol::seal(&key, seq, sent_at_ms, b"body").unwrap()
}

fn token(expires_at_ms: u64) -> TokenRecord {
    TokenRecord { labels: BTreeMap::new(), created_at_ms: 0, expires_at_ms, used_by: None, used_at_ms: None }
}

fn a_token_enrols_exactly_once_and_expires(devices: &Devices, _: &Backing) {
    devices.add_token("t1", &token(u64::MAX)).unwrap();
    devices.add_token("old", &token(1)).unwrap();
    assert_eq!(devices.enrol("t1", |_| device("d1", "k1")).unwrap().unwrap().id, "d1");
    assert_eq!(devices.enrol("t1", |_| device("d2", "k2")).unwrap(), Err(TokenRefused::Used));
    assert_eq!(devices.enrol("old", |_| device("d3", "k3")).unwrap(), Err(TokenRefused::Expired));
    assert_eq!(devices.enrol("nope", |_| device("d4", "k4")).unwrap(), Err(TokenRefused::Unknown));
    devices.add_token("t2", &token(u64::MAX)).unwrap();
    assert_eq!(
        devices.enrol("t2", |_| device("d1", "k9")).unwrap(),
        Err(TokenRefused::DeviceExists("d1".into())),
        "a token must not take over another device's id"
    );
    assert_eq!(devices.get_by_key("k1").unwrap().unwrap().id, "d1");
}

#[test]
fn on_sled_devices_enrolled_before_the_key_split_keep_the_release_key_until_they_enrol_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // A store from before the split: a device record, and no mark in `meta`.
    let old = serde_json::to_vec(&device("old", "k0")).unwrap();
    store.tree("devices").unwrap().insert(b"old", old).unwrap();
    let devices = Devices::open(&store).unwrap();
    assert!(devices.control_by_release_key("old").unwrap());
    devices.add_token("t", &token(u64::MAX)).unwrap();
    devices.enrol("t", |_| device("new", "k1")).unwrap().unwrap();
    assert!(!devices.control_by_release_key("new").unwrap(), "a new enrolment gets the online key");
    // Marked once: opening again marks nothing new; enrolling again clears the mark.
    let devices = Devices::open(&store).unwrap();
    assert!(!devices.control_by_release_key("new").unwrap());
    devices.add_token("t2", &token(u64::MAX)).unwrap();
    devices.enrol("t2", |_| device("old", "k0")).unwrap().unwrap();
    assert!(!devices.control_by_release_key("old").unwrap());
}

fn envelopes_are_stored_once_and_counted(devices: &Devices, _: &Backing) {
    devices.add_token("t", &token(u64::MAX)).unwrap();
    devices.enrol("t", |_| device("d1", "k1")).unwrap().unwrap();
    let bump = |r: &mut DeviceRecord| r.counts.reports += 1;
    assert_eq!(devices.store_envelope("d1", 2, b"two", bump).unwrap(), Stored::New);
    assert_eq!(devices.store_envelope("d1", 1, b"one", bump).unwrap(), Stored::New);
    assert_eq!(devices.store_envelope("d1", 2, b"two", bump).unwrap(), Stored::Duplicate);
    assert_eq!(devices.store_envelope("d1", 2, b"xxx", bump).unwrap(), Stored::Conflict);
    let record = devices.get("d1").unwrap().unwrap();
    assert_eq!((record.counts.envelopes, record.counts.reports, record.counts.duplicates), (2, 2, 2));
    assert_eq!(record.highest_seq, Some(2));
    let seqs: Vec<u64> = devices.envelopes("d1").map(|e| e.unwrap().0).collect();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(devices.next_outgoing_seq("d1").unwrap(), 1);
    assert_eq!(devices.next_outgoing_seq("d1").unwrap(), 2);
}

fn a_revoked_device_leaves_the_targets_stays_revoked_and_cannot_enrol_again(devices: &Devices, _: &Backing) {
    for (t, d, k) in [("t1", "d1", "k1"), ("t2", "d2", "k2")] {
        devices.add_token(t, &token(u64::MAX)).unwrap();
        devices
            .enrol(t, |_| DeviceRecord { cert_serial: Some(format!("{k}ff")), ..device(d, k) })
            .unwrap()
            .unwrap();
    }
    assert_eq!(devices.revoke("nope", "admin").unwrap(), None);
    let first = devices.revoke("d1", "alice").unwrap().unwrap();
    assert_eq!((first.by.as_str(), first.cert_serial.as_deref()), ("alice", Some("k1ff")));
    let again = devices.revoke("d1", "bob").unwrap().unwrap();
    assert_eq!(again, first, "revoking twice changes nothing");
    let ids = |v: Vec<DeviceRecord>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(devices.all().unwrap()), vec!["d2"], "engines no longer see it");
    assert_eq!(ids(devices.every().unwrap()), vec!["d1", "d2"], "the fleet view still lists it");
    assert_eq!(devices.get("d1").unwrap().unwrap().revoked, Some(first.clone()));

    // Deleted: the record and key index go, the revocation stays; enrolment refuses its id.
    let deleted = devices.delete("d1", "alice").unwrap().unwrap();
    assert!(deleted.deleted_at_ms.is_some());
    assert_eq!(devices.get("d1").unwrap(), None);
    assert_eq!(devices.get_by_key("k1").unwrap(), None);
    assert_eq!(devices.revocation("d1").unwrap().unwrap().at_ms, first.at_ms);
    devices.add_token("t3", &token(u64::MAX)).unwrap();
    assert_eq!(devices.enrol("t3", |_| device("d1", "k1")).unwrap(), Err(TokenRefused::Revoked("d1".into())));
    // d2 deleted without a revocation first is revoked by the deletion.
    devices.delete("d2", "bob").unwrap().unwrap();
    let serials: Vec<_> = devices.revocations().unwrap().into_iter().map(|r| r.cert_serial).collect();
    assert_eq!(serials, vec![Some("k1ff".into()), Some("k2ff".into())]);
    assert_eq!(devices.delete("d2", "bob").unwrap(), None);
}

/// Retention removes each device's oldest envelopes up to its first one stored after the cutoff
/// (by the coordinator's clock, whatever the device's says), and a removed seq never becomes
/// storable again: a resend is a duplicate, not a new envelope.
fn old_envelopes_are_pruned_as_a_prefix_and_their_seqs_stay_taken(devices: &Devices, _: &Backing) {
    // `d1` and `d10`: one id a prefix of the other must not mix their envelopes.
    let wire = enrolled_with_signer(devices, &[("t1", "d1", "k1"), ("t2", "d10", "k2")]);
    let none = |_: &mut DeviceRecord| {};
    // d1's clock was lost (it sends 1970 dates), d10's runs a year ahead; they arrive at
    // 1000·seq ms (d1) and at 500 and 9000 ms (d10).
    const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
    for seq in 1..=7 {
        let stored = devices.store_envelope_at("d1", seq, &wire(seq, seq), 1000 * seq, none).unwrap();
        assert_eq!(stored, Stored::New);
    }
    devices.store_envelope_at("d10", 1, &wire(1, YEAR_MS + 500), 500, none).unwrap();
    devices.store_envelope_at("d10", 2, &wire(2, YEAR_MS + 9000), 9000, none).unwrap();

    assert_eq!(devices.prune_envelopes(3500).unwrap(), 4, "d1's 1–3 and d10's 1");
    let seqs = |d: &str| devices.envelopes(d).map(|e| e.unwrap().0).collect::<Vec<_>>();
    assert_eq!(seqs("d1"), vec![4, 5, 6, 7], "the prefix stops at the first newer envelope");
    assert_eq!(seqs("d10"), vec![2]);
    let record = devices.get("d1").unwrap().unwrap();
    assert_eq!(record.pruned_through_seq, Some(3));
    assert_eq!((record.counts.envelopes, record.counts.pruned_envelopes), (7, 3));
    assert_eq!(record.last_seen_ms, Some(7000), "last seen by the coordinator's clock");

    // A resend of a removed seq is acked as a duplicate and stored nowhere; above the mark,
    // envelopes are stored as before.
    assert_eq!(devices.store_envelope("d1", 2, &wire(2, 2000), none).unwrap(), Stored::Duplicate);
    assert_eq!(devices.store_envelope_at("d1", 8, &wire(8, 8), 8000, none).unwrap(), Stored::New);
    assert_eq!(seqs("d1"), vec![4, 5, 6, 7, 8]);
    assert_eq!(devices.prune_envelopes(3500).unwrap(), 0, "nothing more is old enough");
    // Deleted devices' envelopes go too (their revocation stays).
    devices.delete("d10", "admin").unwrap().unwrap();
    assert_eq!(devices.prune_envelopes(10_000).unwrap(), 1 + 5, "d10's last, and d1's 4–8");
    assert_eq!(seqs("d10"), Vec::<u64>::new());
    assert_eq!(devices.get("d1").unwrap().unwrap().pruned_through_seq, Some(8));
}

/// Envelopes stored before arrival times were kept (no entry in `envelope_arrivals`) go by the
/// time their device sent them, as they always did; those stored since go by arrival.
fn envelopes_from_before_arrival_times_go_by_their_sent_time(devices: &Devices, backing: &Backing) {
    let wire = enrolled_with_signer(devices, &[("t", "d", "k")]);
    let none = |_: &mut DeviceRecord| {};
    // Seqs 1 and 2 from an older coordinator: sent at 1000 and 5000, no arrival recorded.
    for (seq, sent) in [(1, 1000), (2, 5000)] {
        devices.store_envelope_at("d", seq, &wire(seq, sent), 0, none).unwrap();
    }
    match (&devices.backend, backing) {
        (Backend::Sled(s), _) => {
            for seq in [1, 2] {
                s.arrivals.remove(sled_backend::envelope_key("d", seq)).unwrap();
            }
        }
        (_, Backing::Postgres(_, store)) => store
            .execute_batch("UPDATE outpost_envelopes SET received_ms = NULL WHERE received_ms = 0")
            .unwrap(),
        _ => unreachable!("a sled backing holds a sled store"),
    }
    devices.store_envelope_at("d", 3, &wire(3, 0), 2000, none).unwrap();
    assert_eq!(devices.prune_envelopes(3000).unwrap(), 1, "seq 1 (sent at 1000); seq 2 was sent at 5000");
    assert_eq!(devices.prune_envelopes(6000).unwrap(), 2, "seq 2 by its sent time, seq 3 by its arrival");
    assert_eq!(devices.envelopes("d").count(), 0);
    if let Backend::Sled(s) = &devices.backend {
        assert_eq!(s.arrivals.iter().count(), 0, "arrival times go with their envelopes");
    }
}

fn a_presence_from_an_older_session_is_a_replay(devices: &Devices, _: &Backing) {
    let _ = enrolled_with_signer(devices, &[("t", "d", "k")]);
    assert_eq!(devices.set_presence("nope", "online", 1).unwrap(), None);
    assert_eq!(devices.set_presence("d", "online", 5).unwrap(), Some(true));
    assert_eq!(devices.set_presence("d", "offline", 4).unwrap(), Some(false), "an older session's replay");
    assert_eq!(devices.get("d").unwrap().unwrap().presence.as_deref(), Some("online"));
    assert_eq!(devices.set_presence("d", "offline", 5).unwrap(), Some(true));
    assert_eq!(devices.get("d").unwrap().unwrap().presence.as_deref(), Some("offline"));
}

fn a_device_marked_for_the_release_key_loses_the_mark_when_it_enrols_again(
    devices: &Devices,
    backing: &Backing,
) {
    let _ = enrolled_with_signer(devices, &[("t", "d", "k")]);
    assert!(!devices.control_by_release_key("d").unwrap(), "a new enrolment gets the online key");
    // Marked as a store from before the split holds it (sled: the tree; PostgreSQL: a migrated row).
    match (&devices.backend, backing) {
        (Backend::Sled(s), _) => drop(s.legacy_control.insert(b"d", &[][..]).unwrap()),
        (_, Backing::Postgres(_, store)) => {
            store.execute_batch("INSERT INTO outpost_legacy_control (device) VALUES ('d')").unwrap()
        }
        _ => unreachable!("a sled backing holds a sled store"),
    }
    assert!(devices.control_by_release_key("d").unwrap());
    devices.clear_legacy_control("d").unwrap();
    assert!(!devices.control_by_release_key("d").unwrap());
    devices.clear_legacy_control("d").unwrap();
}

fn any_u64_seq_is_stored_in_order(devices: &Devices, _: &Backing) {
    let wire = enrolled_with_signer(devices, &[("t", "d", "k")]);
    let none = |_: &mut DeviceRecord| {};
    for seq in [u64::MAX, 5, 1 << 63, 0, (1 << 63) - 1] {
        assert_eq!(devices.store_envelope("d", seq, &wire(seq, 0), none).unwrap(), Stored::New, "{seq}");
    }
    assert_eq!(devices.store_envelope("d", u64::MAX, &wire(u64::MAX, 0), none).unwrap(), Stored::Duplicate);
    let seqs: Vec<u64> = devices.envelopes("d").map(|e| e.unwrap().0).collect();
    assert_eq!(seqs, vec![0, 5, (1 << 63) - 1, 1 << 63, u64::MAX]);
    assert_eq!(devices.get("d").unwrap().unwrap().highest_seq, Some(u64::MAX));
}

fn an_envelope_that_brings_an_event_is_published(devices: &Devices, _: &Backing) {
    let wire = enrolled_with_signer(devices, &[("t", "d", "k")]);
    let events = devices.subscribe_events();
    devices.store_envelope("d", 1, &wire(1, 0), |r: &mut DeviceRecord| r.counts.reports += 1).unwrap();
    assert!(events.drain().unwrap().is_empty(), "no event, nothing published");
    devices.store_envelope("d", 2, &wire(2, 0), |r: &mut DeviceRecord| r.counts.events += 1).unwrap();
    let published: Vec<DeviceRecord> = events.drain().unwrap().iter().filter_map(record_of).collect();
    assert_eq!(published.len(), 1);
    assert_eq!((published[0].id.as_str(), published[0].counts.events), ("d", 1));
}

/// Replicas (each its own pool on one database) storing the same device's envelopes at once —
/// as after a replica died between commit and ack and the device resent — store each seq once,
/// and the record counts every arrival exactly once.
#[test]
fn on_postgres_replicas_storing_one_devices_envelopes_at_once_store_each_seq_once() {
    let db = TestDatabase::new();
    let replicas: Vec<Devices> = (0..3).map(|_| Devices::open_postgres(&db.store())).collect();
    let wire = enrolled_with_signer(&replicas[0], &[("t", "d", "k")]);
    let wires: Vec<Vec<u8>> = (1..=150).map(|seq| wire(seq, 0)).collect();
    std::thread::scope(|s| {
        for (n, devices) in replicas.iter().enumerate() {
            let wires = &wires;
            s.spawn(move || {
                // Each replica in its own order, so they overlap on every seq.
                let mut order: Vec<u64> = (1..=150).collect();
                order.rotate_left(n * 50);
                for seq in order {
                    let wire = &wires[(seq - 1) as usize];
                    let stored =
                        devices.store_envelope("d", seq, wire, |r: &mut DeviceRecord| r.counts.reports += 1);
                    assert!(matches!(stored.unwrap(), Stored::New | Stored::Duplicate), "{seq}");
                }
            });
        }
    });
    let record = replicas[1].get("d").unwrap().unwrap();
    assert_eq!((record.counts.envelopes, record.counts.reports, record.counts.duplicates), (150, 150, 300));
    assert_eq!(replicas[2].envelopes("d").count(), 150);
}

/// Replicas racing to enrol with one token: exactly one device is enrolled.
#[test]
fn on_postgres_replicas_racing_with_one_token_enrol_one_device() {
    let db = TestDatabase::new();
    let replicas: Vec<Devices> = (0..4).map(|_| Devices::open_postgres(&db.store())).collect();
    replicas[0].add_token("t", &token(u64::MAX)).unwrap();
    let outcomes: Vec<Result<DeviceRecord, TokenRefused>> = std::thread::scope(|s| {
        let racers: Vec<_> = replicas
            .iter()
            .enumerate()
            .map(|(n, devices)| {
                s.spawn(move || devices.enrol("t", |_| device(&format!("d{n}"), &format!("k{n}"))).unwrap())
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().filter(|o| o.is_err()).all(|o| *o == Err(TokenRefused::Used)), "{outcomes:?}");
    assert_eq!(replicas[3].every().unwrap().len(), 1);
}

fn a_record_holding_any_string_a_device_sent_is_stored(devices: &Devices, _: &Backing) {
    let wire = enrolled_with_signer(devices, &[("t", "d", "k")]);
    let odd = "nul \0, quote \", backslash \\, emoji \u{1F600}, \u{7f}";
    let set = |r: &mut DeviceRecord| r.agent_version = Some(odd.to_owned());
    assert_eq!(devices.store_envelope("d", 1, &wire(1, 0), set).unwrap(), Stored::New);
    assert_eq!(devices.get("d").unwrap().unwrap().agent_version.as_deref(), Some(odd));
}

fn a_batch_is_stored_in_order_each_seq_once(devices: &Devices, _: &Backing) {
    let wire = enrolled_with_signer(devices, &[("t1", "d1", "k1"), ("t2", "d2", "k2")]);
    let events = devices.subscribe_events();
    devices.store_envelope("d1", 1, &wire(1, 0), |_: &mut DeviceRecord| {}).unwrap();
    let report = |r: &mut DeviceRecord| r.counts.reports += 1;
    let event = |r: &mut DeviceRecord| r.counts.events += 1;
    let (one, two, three, other) = (wire(1, 0), wire(2, 0), wire(3, 0), wire(2, 99));
    let arrival = |device, seq, wire, update| Arrival { device, seq, wire, received_ms: 7, update };
    let outcomes = devices
        .store_envelopes(&[
            arrival("d2", 3, &three, &event),
            arrival("d1", 1, &one, &report),
            arrival("d1", 2, &two, &report),
            arrival("d2", 1, &one, &report),
            arrival("d1", 2, &two, &report),
            arrival("d1", 2, &other, &report),
            arrival("d2", 2, &two, &event),
        ])
        .unwrap();
    use Stored::*;
    assert_eq!(outcomes, [New, Duplicate, New, New, Duplicate, Conflict, New]);
    let d1 = devices.get("d1").unwrap().unwrap();
    assert_eq!((d1.counts.envelopes, d1.counts.reports, d1.counts.duplicates), (2, 1, 3));
    let d2 = devices.get("d2").unwrap().unwrap();
    assert_eq!(
        (d2.counts.envelopes, d2.counts.reports, d2.counts.events, d2.highest_seq),
        (3, 1, 2, Some(3))
    );
    let seqs: Vec<u64> = devices.envelopes("d2").map(|e| e.unwrap().0).collect();
    assert_eq!(seqs, [1, 2, 3]);
    // Each record an event rewrote is published as it was then, in order.
    let published: Vec<(String, u64)> =
        events.drain().unwrap().iter().filter_map(record_of).map(|r| (r.id, r.counts.events)).collect();
    assert_eq!(published, [("d2".to_owned(), 1), ("d2".to_owned(), 2)]);
    assert_eq!(devices.store_envelopes(&[]).unwrap(), []);
    let missing =
        devices.store_envelopes(&[arrival("nope", 1, &one, &report), arrival("d1", 9, &one, &report)]);
    assert!(matches!(missing, Err(StoreError::Corrupt { .. })), "{missing:?}");
}

/// Replicas storing batches that share devices (each device's envelopes spread over them, as
/// a shared subscription hands them out, some to two) neither deadlock nor lose or double a seq.
#[test]
fn on_postgres_replicas_storing_batches_that_share_devices_store_every_seq_once() {
    const DEVICES: u64 = 20;
    const SEQS: u64 = 60;
    let db = TestDatabase::new();
    let replicas: Vec<Devices> = (0..3).map(|_| Devices::open_postgres(&db.store())).collect();
    let enrolled: Vec<(String, String, String)> =
        (0..DEVICES).map(|d| (format!("t{d}"), format!("d{d}"), format!("k{d}"))).collect();
    let refs: Vec<(&str, &str, &str)> =
        enrolled.iter().map(|(t, d, k)| (t.as_str(), d.as_str(), k.as_str())).collect();
    let wire = enrolled_with_signer(&replicas[0], &refs);
    let wires: Vec<Vec<u8>> = (1..=SEQS).map(|seq| wire(seq, 0)).collect();
    let count = |r: &mut DeviceRecord| r.counts.reports += 1;
    std::thread::scope(|s| {
        for (n, replica) in replicas.iter().enumerate() {
            let (wires, ids) = (&wires, &enrolled);
            s.spawn(move || {
                // Replica n gets the seqs whose (seq + device) % 3 is n, and every fifth seq again.
                let mine: Vec<(usize, u64)> = (0..DEVICES as usize)
                    .flat_map(|d| (1..=SEQS).map(move |seq| (d, seq)))
                    .filter(|&(d, seq)| (seq as usize + d) % 3 == n || seq % 5 == 0)
                    .collect();
                for batch in mine.chunks(64) {
                    let arrivals: Vec<Arrival<'_>> = batch
                        .iter()
                        .rev()
                        .map(|&(d, seq)| Arrival {
                            device: &ids[d].1,
                            seq,
                            wire: &wires[(seq - 1) as usize],
                            received_ms: 1,
                            update: &count,
                        })
                        .collect();
                    let outcomes = replica.store_envelopes(&arrivals).unwrap();
                    assert!(
                        outcomes.iter().all(|o| matches!(o, Stored::New | Stored::Duplicate)),
                        "{outcomes:?}"
                    );
                }
            });
        }
    });
    for (_, id, _) in &enrolled {
        let record = replicas[1].get(id).unwrap().unwrap();
        assert_eq!((record.counts.envelopes, record.counts.reports), (SEQS, SEQS), "{id}");
        assert_eq!(record.counts.duplicates, 2 * (SEQS / 5), "{id}: every fifth seq came three times");
        assert_eq!(replicas[2].envelopes(id).count() as u64, SEQS, "{id}");
    }
}

fn outgoing_seqs_are_reserved_in_runs_and_records_read_together(devices: &Devices, backing: &Backing) {
    let _ = enrolled_with_signer(devices, &[("t1", "d1", "k1"), ("t2", "d2", "k2")]);
    assert_eq!(devices.next_outgoing_seq("d1").unwrap(), 1);
    let last = devices.reserve_outgoing_seqs(&[("d2", 3), ("d1", 2)]).unwrap();
    assert_eq!((last["d1"], last["d2"]), (3, 3), "d1: 2 and 3; d2: 1 to 3");
    assert_eq!(devices.next_outgoing_seq("d2").unwrap(), 4);
    let found = devices.get_many(&["d2", "nope", "d1"]).unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(found["d1"].key_id, "k1");
    assert!(devices.control_by_release_keys(&["d1", "d2"]).unwrap().is_empty());
    match (&devices.backend, backing) {
        (Backend::Sled(s), _) => drop(s.legacy_control.insert(b"d2", &[][..]).unwrap()),
        (_, Backing::Postgres(_, store)) => {
            store.execute_batch("INSERT INTO outpost_legacy_control (device) VALUES ('d2')").unwrap()
        }
        _ => unreachable!("a sled backing holds a sled store"),
    }
    let marked = devices.control_by_release_keys(&["d1", "d2", "nope"]).unwrap();
    assert_eq!(marked.into_iter().collect::<Vec<_>>(), ["d2"]);
}
