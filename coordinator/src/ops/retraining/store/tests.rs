//! Unit tests of the retraining run store on both backends.
use super::*;
use crate::base::pg::store::testing::TestDatabase;

fn run(model: &str, started_ms: u64, status: &str) -> RunRecord {
    RunRecord { status: status.to_owned(), ..RunRecord::started(model, "manual", started_ms) }
}

fn runs_sort_oldest_first_and_the_newest_of_each_model_is_found(runs: &RunStore) {
    // `m` and `m2`: one model's name a prefix of another's must not mix their runs.
    for (model, at) in [("m", 30), ("m", 10), ("m2", 5), ("m", 20)] {
        runs.put(&run(model, at, "running")).unwrap();
    }
    runs.put(&run("m", 30, "succeeded")).unwrap();
    let of_m: Vec<(u64, String)> =
        runs.runs("m").unwrap().into_iter().map(|r| (r.started_ms, r.status)).collect();
    assert_eq!(of_m, [(10, "running".into()), (20, "running".into()), (30, "succeeded".into())]);
    let mut latest: Vec<(String, u64)> =
        runs.latest().unwrap().into_iter().map(|r| (r.model, r.started_ms)).collect();
    latest.sort();
    assert_eq!(latest, [("m".into(), 30), ("m2".into(), 5)]);
    assert!(runs.runs("none").unwrap().is_empty());
}

#[test]
fn on_sled_runs_sort_oldest_first_and_the_newest_of_each_model_is_found() {
    let dir = tempfile::tempdir().unwrap();
    runs_sort_oldest_first_and_the_newest_of_each_model_is_found(
        &RunStore::open(&Store::open(dir.path()).unwrap()).unwrap(),
    );
}

#[test]
fn on_postgres_runs_sort_oldest_first_and_the_newest_of_each_model_is_found() {
    let db = TestDatabase::new();
    runs_sort_oldest_first_and_the_newest_of_each_model_is_found(&RunStore::open_postgres(&db.store()));
}
