//! The rollouts' repository on both backends: revisions, the active index, ids, incidents; and
//! on PostgreSQL, the engine's writes under the `rollouts` lease.

use super::*;
use crate::base::pg::store::testing::{Backing, TestDatabase, later};
use crate::ops::rollout::Phase;
use crate::ops::rollout::tests::bare;

fn sled() -> (RolloutStore, Backing) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (RolloutStore::open(&store).unwrap(), Backing::Sled(dir, store))
}

fn postgres() -> (RolloutStore, Backing) {
    let db = TestDatabase::new();
    (RolloutStore::open_postgres(&db.store(), Fence::new(ENGINE)), Backing::Postgres(db))
}

/// A fresh repository on one backend.
type Open = fn() -> (RolloutStore, Backing);

crate::base::pg::store::testing::on_both_backends!(
    sled, postgres;
    only_active_rollouts_are_read_by_a_tick,
    a_rollout_changed_since_it_was_read_is_not_overwritten,
    ids_count_up_per_prefix,
    incidents_are_kept_until_closed,
);

fn rollout(id: &str, phase: Phase) -> Rollout {
    let mut r = bare(r#"{"model": "bc", "version": "1.1.0"}"#);
    r.id = id.into();
    r.phase = phase;
    r
}

fn only_active_rollouts_are_read_by_a_tick(open: Open) {
    let (repo, _backing) = open();
    for (id, phase) in [("r-1", Phase::Succeeded), ("r-2", Phase::Baking), ("r-3", Phase::Paused)] {
        repo.put(&mut rollout(id, phase), Writer::Operator).unwrap();
    }
    let ids = |repo: &RolloutStore| repo.active().unwrap().into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(&repo), ["r-2", "r-3"]);
    let mut r2 = repo.get("r-2").unwrap().unwrap();
    r2.phase = Phase::RolledBack;
    repo.put(&mut r2, Writer::Operator).unwrap();
    assert_eq!(ids(&repo), ["r-3"], "a finished rollout leaves the active ones");
    assert_eq!(repo.list().unwrap().len(), 3, "and stays listed");
    assert_eq!(repo.get("r-9").unwrap(), None);
}

fn a_rollout_changed_since_it_was_read_is_not_overwritten(open: Open) {
    let (repo, _backing) = open();
    let mut r = rollout("r-1", Phase::Applying);
    repo.put(&mut r, Writer::Operator).unwrap();
    assert_eq!(r.revision, 1);
    // Two writers read revision 1: the engine moves it on, then an operator's pause arrives.
    let (mut engine, mut operator) = (repo.get("r-1").unwrap().unwrap(), repo.get("r-1").unwrap().unwrap());
    engine.wave = 1;
    repo.put(&mut engine, Writer::Operator).unwrap();
    operator.phase = Phase::Paused;
    let refused = repo.put(&mut operator, Writer::Operator).unwrap_err();
    assert!(matches!(refused, StoreError::Stale { read: 1, found: 2, .. }), "{refused}");
    assert!(refused.to_string().contains("rollouts/r-1` changed meanwhile"), "{refused}");
    assert_eq!(operator.revision, 1, "a refused write counts nothing");
    // Read again, the pause lands on top of the engine's step.
    let mut again = repo.get("r-1").unwrap().unwrap();
    again.phase = Phase::Paused;
    repo.put(&mut again, Writer::Operator).unwrap();
    let stored = repo.get("r-1").unwrap().unwrap();
    assert_eq!((stored.wave, stored.phase, stored.revision), (1, Phase::Paused, 3));
    // A second rollout under an id that is taken is refused, not stored over the first.
    let refused = repo.put(&mut rollout("r-1", Phase::Applying), Writer::Operator).unwrap_err();
    assert!(matches!(refused, StoreError::Stale { read: 0, found: 3, .. }), "{refused}");
}

fn ids_count_up_per_prefix(open: Open) {
    let (repo, _backing) = open();
    assert_eq!(repo.next_id("r").unwrap(), "r-000001");
    assert_eq!(repo.next_id("r").unwrap(), "r-000002");
    assert_eq!(repo.next_id("inc").unwrap(), "inc-000001");
}

fn incidents_are_kept_until_closed(open: Open) {
    let (repo, _backing) = open();
    let r = rollout("r-1", Phase::RolledBack);
    let mut incident = Incident {
        id: "inc-000001".into(),
        rollout: r.id.clone(),
        model: "bc".into(),
        version: "1.1.0".into(),
        baseline: "1.0.0".into(),
        opened_ms: 5,
        reason: "errors".into(),
        gate: None,
        gates: vec![],
        baseline_scope: String::new(),
        devices_rolled_back: vec!["d0".into()],
        timeline: vec![],
        closed_ms: None,
        closed_by: None,
    };
    // On PostgreSQL the engine's write needs its lease: an operator's does not.
    repo.put_incident(&incident, Writer::Operator).unwrap();
    assert_eq!(repo.open_incidents().unwrap().len(), 1);
    incident.closed_ms = Some(9);
    incident.closed_by = Some("alice".into());
    repo.put_incident(&incident, Writer::Operator).unwrap();
    assert!(repo.open_incidents().unwrap().is_empty());
    assert_eq!(repo.incident("inc-000001").unwrap().unwrap().closed_by.as_deref(), Some("alice"));
    assert_eq!(repo.incidents().unwrap().len(), 1);
}

#[test]
fn on_sled_the_active_index_is_rebuilt_at_open() {
    let (repo, backing) = sled();
    let Backing::Sled(_dir, store) = backing else { unreachable!("sled") };
    for (id, phase) in [("r-1", Phase::Succeeded), ("r-2", Phase::Baking)] {
        repo.put(&mut rollout(id, phase), Writer::Operator).unwrap();
    }
    store.tree("rollouts_active").unwrap().clear().unwrap();
    assert!(repo.active().unwrap().is_empty());
    let reopened = RolloutStore::open(&store).unwrap();
    assert_eq!(reopened.active().unwrap().into_iter().map(|r| r.id).collect::<Vec<_>>(), ["r-2"]);
}

fn take_lease(store: &PgStore, holder: &str) -> i64 {
    crate::base::pg::store::testing::take_lease(store, ENGINE, holder)
}

/// The engine writes a step only while its replica holds the `rollouts` lease: a deposed
/// leader's late step (and its incident) is refused, naming the terms, and what the new leader
/// wrote stands; an operator's command goes through on any replica.
#[test]
fn on_postgres_a_deposed_engines_steps_are_refused() {
    let db = TestDatabase::new();
    let (old, new) = (Fence::new(ENGINE), Fence::new(ENGINE));
    let deposed = RolloutStore::open_postgres(&db.store(), old.clone());
    let leader = RolloutStore::open_postgres(&db.store(), new.clone());
    let mut r = rollout("r-1", Phase::Applying);
    deposed.put(&mut r, Writer::Operator).unwrap();
    let refused = deposed.put(&mut r.clone(), Writer::Engine).unwrap_err();
    assert!(matches!(refused, StoreError::Fenced(_)), "no lease, no step: {refused}");

    old.hold(take_lease(&db.store(), "old"), later());
    let mut step = deposed.get("r-1").unwrap().unwrap();
    step.wave = 1;
    deposed.put(&mut step, Writer::Engine).unwrap();
    new.hold(take_lease(&db.store(), "new"), later());
    let mut newer = leader.get("r-1").unwrap().unwrap();
    newer.wave = 2;
    leader.put(&mut newer, Writer::Engine).unwrap();

    let mut late = step.clone();
    late.wave = 9;
    let refused = deposed.put(&mut late, Writer::Engine).unwrap_err().to_string();
    assert!(refused.contains("term 1 is over") && refused.contains("Some(2)"), "{refused}");
    let incident = Incident {
        id: "inc-000001".into(),
        rollout: "r-1".into(),
        model: "bc".into(),
        version: "1.1.0".into(),
        baseline: "1.0.0".into(),
        opened_ms: 5,
        reason: "late".into(),
        gate: None,
        gates: vec![],
        baseline_scope: String::new(),
        devices_rolled_back: vec![],
        timeline: vec![],
        closed_ms: None,
        closed_by: None,
    };
    assert!(matches!(deposed.put_incident(&incident, Writer::Engine), Err(StoreError::Fenced(_))));
    assert!(leader.incidents().unwrap().is_empty());
    assert_eq!(leader.get("r-1").unwrap().unwrap().wave, 2, "the new leader's step stands");

    let mut paused = deposed.get("r-1").unwrap().unwrap();
    paused.phase = Phase::Paused;
    deposed.put(&mut paused, Writer::Operator).unwrap();
    assert_eq!(leader.get("r-1").unwrap().unwrap().phase, Phase::Paused);
}
