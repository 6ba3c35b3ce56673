//! Unit tests of the device store: tokens, enrolment, envelopes, revocation, key roles.
use super::*;
use std::collections::BTreeMap;

fn device(id: &str, key: &str) -> DeviceRecord {
    DeviceRecord {
        key_id: key.into(),
        ..DeviceRecord::new(id, &[key.bytes().fold(0, u8::wrapping_add); 32], BTreeMap::new())
    }
}

/// A store in `dir` with each (token, device, key id) of `enrolled` enrolled, and a sealer of
/// envelopes `(seq, sent_at_ms)` under one signing key.
fn enrolled_with_signer(
    dir: &std::path::Path,
    enrolled: &[(&str, &str, &str)],
) -> (Devices, impl Fn(u64, u64) -> Vec<u8>) {
    let devices = Devices::open(&Store::open(dir).unwrap()).unwrap();
    for (t, d, k) in enrolled {
        devices.add_token(t, &token(u64::MAX)).unwrap();
        devices.enrol(t, |_| device(d, k)).unwrap().unwrap();
    }
    let (key, _) = outpost_shared::protocol::keys::SigningKey::generate().unwrap();
    let wire = move |seq: u64, sent_at_ms: u64| {
        outpost_shared::protocol::seal(&key, seq, sent_at_ms, b"body").unwrap()
    };
    (devices, wire)
}

fn token(expires_at_ms: u64) -> TokenRecord {
    TokenRecord { labels: BTreeMap::new(), created_at_ms: 0, expires_at_ms, used_by: None, used_at_ms: None }
}

#[test]
fn a_token_enrols_exactly_once_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let devices = Devices::open(&Store::open(dir.path()).unwrap()).unwrap();
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
fn devices_enrolled_before_the_key_split_keep_the_release_key_until_they_enrol_again() {
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

#[test]
fn envelopes_are_stored_once_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let devices = Devices::open(&Store::open(dir.path()).unwrap()).unwrap();
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

#[test]
fn a_revoked_device_leaves_the_targets_stays_revoked_and_cannot_enrol_again() {
    let dir = tempfile::tempdir().unwrap();
    let devices = Devices::open(&Store::open(dir.path()).unwrap()).unwrap();
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
#[test]
fn old_envelopes_are_pruned_as_a_prefix_and_their_seqs_stay_taken() {
    let dir = tempfile::tempdir().unwrap();
    // `d1` and `d10`: one id a prefix of the other must not mix their envelopes.
    let (devices, wire) = enrolled_with_signer(dir.path(), &[("t1", "d1", "k1"), ("t2", "d10", "k2")]);
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
#[test]
fn envelopes_from_before_arrival_times_go_by_their_sent_time() {
    let dir = tempfile::tempdir().unwrap();
    let (devices, wire) = enrolled_with_signer(dir.path(), &[("t", "d", "k")]);
    let none = |_: &mut DeviceRecord| {};
    // Seqs 1 and 2 from an older coordinator: sent at 1000 and 5000, no arrival recorded.
    for (seq, sent) in [(1, 1000), (2, 5000)] {
        devices.store_envelope_at("d", seq, &wire(seq, sent), 0, none).unwrap();
        devices.arrivals.remove(envelope_key("d", seq)).unwrap();
    }
    devices.store_envelope_at("d", 3, &wire(3, 0), 2000, none).unwrap();
    assert_eq!(devices.prune_envelopes(3000).unwrap(), 1, "seq 1 (sent at 1000); seq 2 was sent at 5000");
    assert_eq!(devices.prune_envelopes(6000).unwrap(), 2, "seq 2 by its sent time, seq 3 by its arrival");
    assert_eq!(devices.arrivals.iter().count(), 0, "arrival times go with their envelopes");
}
