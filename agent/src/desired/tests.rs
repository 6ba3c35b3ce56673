//! The desired-state rules on their own: signature, device, revision, expiry by the trusted time.
use super::*;
use outpost_shared::protocol::SigningKey;

fn applier(dir: &std::path::Path, key: &SigningKey) -> DesiredApplier {
    DesiredApplier {
        device_id: "dev-a".into(),
        trust: Arc::new(Trust::empty(dir, Some(key.public_key()), Vec::new())),
        store: ModelStore::new(dir, 3, &AtRest::clear()),
        fetch: Fetch::offline(None),
        reporter: None,
        metrics: Arc::new(crate::metrics::Metrics::new().unwrap()),
        clock: Arc::new(crate::trusted_time::TrustedClock::default()),
    }
}

fn sealed(key: &SigningKey, revision: u64, sealed_at_ms: u64, expires_at_ms: u64) -> Vec<u8> {
    let state = DesiredState {
        device: "dev-a".into(),
        revision,
        models: Vec::new(),
        expires_at_ms,
        roots: Vec::new(),
    };
    protocol::seal(key, revision, sealed_at_ms, &messages::encode(&CoordinatorMessage::Desired(state)))
        .unwrap()
}

#[test]
fn an_expired_state_is_refused_by_the_signed_time_whatever_the_device_clock_says() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate().unwrap();
    let a = applier(dir.path(), &key);
    // Sealed at t=1000 s, current for a minute: fine when it arrives.
    assert_eq!(a.open(&sealed(&key, 1, 1_000_000, 1_060_000)).unwrap().revision, 1);
    // The coordinator's signed time moves on (an ack sealed 5 minutes later): a state that
    // expired before it is an old message, refused even if this device's clock is years behind.
    a.clock.observe(1_300_000);
    match a.open(&sealed(&key, 2, 1_000_000, 1_060_000)) {
        Err(DesiredError::Expired { revision: 2, expired_at_ms: 1_060_000, now_ms }) => {
            assert!(now_ms >= 1_300_000)
        }
        other => panic!("an expired state was not refused as expired: {other:?}"),
    }
    // One that does not expire (0), or expires later, is taken.
    assert!(a.open(&sealed(&key, 3, 1_300_000, 0)).is_ok());
    assert!(a.open(&sealed(&key, 4, 1_300_000, 2_000_000)).is_ok());
    // The state's own signed time counts too: sealed after its own expiry is refused.
    assert!(matches!(a.open(&sealed(&key, 5, 3_000_000, 2_500_000)), Err(DesiredError::Expired { .. })));
}

#[test]
fn an_applied_revision_and_its_expiry_survive_a_restart_and_older_revisions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate().unwrap();
    let a = applier(dir.path(), &key);
    let state = a.open(&sealed(&key, 7, 1_000, 9_000)).unwrap();
    a.apply(&state).unwrap();
    let again = applier(dir.path(), &key);
    assert_eq!(again.applied_record(), Applied { revision: 7, expires_at_ms: 9_000 });
    assert!(matches!(
        again.open(&sealed(&key, 6, 1_000, 0)),
        Err(DesiredError::Stale { found: 6, applied: 7 })
    ));
    let (other, _) = SigningKey::generate().unwrap();
    assert!(matches!(again.open(&sealed(&other, 8, 1_000, 0)), Err(DesiredError::Signature(_))));
}
