//! Unit tests of the alert store on both backends, and of its writes under the `alerts` lease
//! on PostgreSQL.
use std::collections::BTreeMap;

use super::*;
use crate::base::pg::store::testing::{TestDatabase, later};

fn alert(rule: &str, summary: &str) -> AlertRecord {
    AlertRecord {
        labels: BTreeMap::from([("alertname".to_owned(), rule.to_owned())]),
        summary: summary.to_owned(),
        devices: vec!["d1".into()],
        starts_at_ms: 1,
        ends_at_ms: None,
        webhook_notified: false,
        alertmanager_resolved: false,
    }
}

fn stores_replaces_and_forgets_alerts(alerts: &AlertStore) {
    alerts.put(&alert("drift", "first")).unwrap();
    alerts.put(&alert("drift", "second")).unwrap();
    alerts.put(&alert("latency", "slow")).unwrap();
    let mut all = alerts.all().unwrap();
    all.sort_by(|a, b| a.summary.cmp(&b.summary));
    assert_eq!(all.iter().map(|a| a.summary.as_str()).collect::<Vec<_>>(), ["second", "slow"]);
    alerts.remove(&fingerprint(&alert("drift", "").labels)).unwrap();
    assert_eq!(alerts.all().unwrap().len(), 1);
    alerts.remove("no such alert").unwrap();
}

#[test]
fn on_sled_stores_replaces_and_forgets_alerts() {
    let dir = tempfile::tempdir().unwrap();
    stores_replaces_and_forgets_alerts(&AlertStore::open(&Store::open(dir.path()).unwrap()).unwrap());
}

fn take_lease(store: &PgStore, holder: &str) -> i64 {
    crate::base::pg::store::testing::take_lease(store, ENGINE, holder)
}

#[test]
fn on_postgres_stores_replaces_and_forgets_alerts() {
    let db = TestDatabase::new();
    let store = db.store();
    let fence = Fence::new(ENGINE);
    fence.hold(take_lease(&store, "me"), later());
    stores_replaces_and_forgets_alerts(&AlertStore::open_postgres(&store, fence));
}

/// A replica whose lease passed to another cannot write alerts any more: its late write fails,
/// naming both terms, and what the new holder wrote stands.
#[test]
fn on_postgres_a_deposed_replicas_alert_writes_are_refused() {
    let db = TestDatabase::new();
    let store = db.store();
    let (old, new) = (Fence::new(ENGINE), Fence::new(ENGINE));
    let (deposed, holder) =
        (AlertStore::open_postgres(&store, old.clone()), AlertStore::open_postgres(&db.store(), new.clone()));
    let refused = deposed.put(&alert("drift", "before any lease")).unwrap_err();
    assert!(matches!(refused, StoreError::Fenced(_)), "no lease, no write: {refused}");
    old.hold(take_lease(&store, "old"), later());
    deposed.put(&alert("drift", "old leader")).unwrap();
    new.hold(take_lease(&store, "new"), later());
    holder.put(&alert("drift", "new leader")).unwrap();
    let refused = deposed.put(&alert("drift", "late write")).unwrap_err().to_string();
    assert!(refused.contains("term 1 is over") && refused.contains("Some(2)"), "{refused}");
    assert!(matches!(deposed.remove(&fingerprint(&alert("drift", "").labels)), Err(StoreError::Fenced(_))));
    assert_eq!(holder.all().unwrap()[0].summary, "new leader");
}
