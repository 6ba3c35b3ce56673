//! Retention: the monitoring history (per-window traffic, drift verdicts, uploaded predictions
//! and their labels) is kept for `retention.monitoring_days` and pruned hourly, so the
//! coordinator's disk use follows the fleet's size, not its age.
//!
//! What is pruned, by the time it is about: traffic windows by their end, their minute and hour
//! roll-ups once the whole bucket is older than the cutoff, drift verdicts by
//! when the agent computed them, predictions and labels by when the prediction was made. The
//! raw envelopes devices sent are kept for `retention.envelope_days`; the fleet floor prunes
//! them (`Devices::prune_envelopes`), in the same hourly pass, through the function
//! [`run`] is given. On PostgreSQL the same history goes from its tables ([`pg::prune`]), by
//! the one replica holding the `retention` lease.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::base::backing::Backing;
use crate::base::store::{Store, StoreError};
use crate::monitoring::report;
use crate::monitoring::slo::rollup::{HOUR_MS, MINUTE_MS};

pub mod pg;

/// `[retention]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days of monitoring history (traffic windows, labels, drift verdicts) kept; older
    /// records are pruned.
    pub monitoring_days: u64,
    /// Days the raw signed envelopes devices sent are kept, counted from when the coordinator
    /// stored them (by its clock, not the device's; what was derived from them follows
    /// `monitoring_days`); older ones are removed, and their seqs stay refused as replays.
    pub envelope_days: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { monitoring_days: 90, envelope_days: 30 }
    }
}

impl RetentionConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.monitoring_days == 0 {
            return Err(("retention.monitoring_days".into(), "must be at least 1".into()));
        }
        if self.envelope_days == 0 {
            return Err(("retention.envelope_days".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

/// Entries removed per tree by one pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub traffic: u64,
    /// Minute and hour buckets of traffic, labels (both also by device label) and drift.
    pub rollups: u64,
    /// Drift verdicts, and the version runs of devices whose every verdict went.
    pub drift_history: u64,
    pub predictions: u64,
    pub labels: u64,
    pub shadow: u64,
}

/// The `u64` big-endian time right after the first `\0` of a key (`model \0 at_ms …`).
fn time_after_model(key: &[u8]) -> Option<u64> {
    let start = key.iter().position(|b| *b == 0)? + 1;
    Some(u64::from_be_bytes(key.get(start..start + 8)?.try_into().ok()?))
}

fn prune_tree(
    store: &Store,
    name: &str,
    cutoff_ms: u64,
    time_of: impl Fn(&[u8], &[u8]) -> Option<u64>,
) -> Result<u64, StoreError> {
    let tree = store.tree(name)?;
    let mut batch = sled::Batch::default();
    let mut removed = 0;
    for item in tree.iter() {
        let (k, v) = item.map_err(|e| store.storage_error(e))?;
        if time_of(&k, &v).is_some_and(|t| t < cutoff_ms) {
            batch.remove(k);
            removed += 1;
        }
    }
    tree.apply_batch(batch).map_err(|e| store.storage_error(e))?;
    Ok(removed)
}

/// Removes monitoring history older than `cutoff_ms`.
pub fn prune(store: &Store, cutoff_ms: u64) -> Result<Pruned, StoreError> {
    let json_time = |field: &'static str| {
        move |_: &[u8], v: &[u8]| serde_json::from_slice::<serde_json::Value>(v).ok()?.get(field)?.as_u64()
    };
    Ok(Pruned {
        traffic: prune_tree(store, "traffic", cutoff_ms, |k, _| time_after_model(k))?,
        rollups: [
            ("traffic_1m", MINUTE_MS),
            ("traffic_1h", HOUR_MS),
            ("labels_1m", MINUTE_MS),
            ("labels_1h", HOUR_MS),
            ("traffic_by_label_1m", MINUTE_MS),
            ("traffic_by_label_1h", HOUR_MS),
            ("labels_by_label_1m", MINUTE_MS),
            ("labels_by_label_1h", HOUR_MS),
            ("drift_1m", MINUTE_MS),
            ("drift_1h", HOUR_MS),
        ]
        .into_iter()
        .try_fold(0, |n, (tree, width)| -> Result<u64, StoreError> {
            // A bucket goes once its last millisecond is older than the cutoff.
            Ok(n + prune_tree(store, tree, cutoff_ms, |k, _| Some(time_after_model(k)? + width - 1))?)
        })?,
        drift_history: prune_tree(store, "drift_history", cutoff_ms, |k, _| time_after_model(k))?
            + prune_tree(store, "drift_devices", cutoff_ms, |_, v| report::newest_verdict(v))?,
        predictions: prune_tree(store, "predictions", cutoff_ms, json_time("at_ms"))?,
        labels: prune_tree(store, "labels", cutoff_ms, json_time("predicted_at_ms"))?,
        shadow: prune_tree(store, "shadow", cutoff_ms, |k, _| time_after_model(k))?,
    })
}

/// Removes envelopes stored before a cutoff (ms, the coordinator's clock); answers how many went.
pub type PruneEnvelopes = dyn Fn(u64) -> Result<u64, StoreError> + Send + Sync;

/// The lease on pruning (PostgreSQL): one replica prunes for all.
pub const ENGINE: &str = "retention";

/// Prunes at start and then hourly until `stop`: monitoring history, and the raw envelopes
/// through `prune_envelopes`. On PostgreSQL only the replica holding the [`ENGINE`] lease
/// prunes (the others look again every half minute, so a new holder prunes soon).
pub fn run(
    backing: Backing,
    config: RetentionConfig,
    prune_envelopes: std::sync::Arc<PruneEnvelopes>,
    clock: crate::base::clock::Clock,
    stop: tokio::sync::watch::Receiver<bool>,
) -> impl Future<Output = ()> {
    // Asked for now, not when first polled: the lease keeper takes the fences asked for
    // before it starts.
    let fence = backing.fence(ENGINE);
    prune_while_leading(backing, fence, config, prune_envelopes, clock, stop)
}

async fn prune_while_leading(
    backing: Backing,
    fence: Option<crate::base::pg::store::Fence>,
    config: RetentionConfig,
    prune_envelopes: std::sync::Arc<PruneEnvelopes>,
    clock: crate::base::clock::Clock,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if !crate::base::backing::leads(fence.as_ref()) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(30)) => continue,
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let now = clock.now_ms();
        let cutoff = now.saturating_sub(config.monitoring_days.saturating_mul(86_400_000));
        let b = backing.clone();
        let pruned = tokio::task::spawn_blocking(move || match &b {
            Backing::Sled(store) => prune(store, cutoff),
            Backing::Postgres(shared) => pg::prune(&shared.store, cutoff),
        });
        match pruned.await {
            Ok(Ok(p)) if p != Pruned::default() => {
                tracing::info!(?p, days = config.monitoring_days, "pruned monitoring history")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "pruning monitoring history failed"),
            Err(e) => tracing::error!(error = %e, "pruning task failed"),
        }
        let cutoff = now.saturating_sub(config.envelope_days.saturating_mul(86_400_000));
        let prune_envelopes = std::sync::Arc::clone(&prune_envelopes);
        match tokio::task::spawn_blocking(move || prune_envelopes(cutoff)).await {
            Ok(Ok(0)) => {
                tracing::info!(
                    days = config.envelope_days,
                    "stored envelopes all within retention; none pruned"
                )
            }
            Ok(Ok(n)) => {
                tracing::info!(envelopes = n, days = config.envelope_days, "pruned stored envelopes")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "pruning stored envelopes failed"),
            Err(e) => tracing::error!(error = %e, "pruning task failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_shared::histogram::LogHistogram;
    use outpost_shared::protocol::messages::{
        DriftReport, FeedbackBatch, LabelledPrediction, LogWindow, ModelDrift, ModelWindow, OutboxStats,
        PredictionBatch, Report, SystemStats,
    };
    use outpost_shared::protocol::records::{PredictionRecord, RecordedInputs};
    use outpost_shared::protocol::vocab::Slot;

    fn report(at_ms: u64) -> Report {
        Report {
            window_start_ms: at_ms - 1000,
            window_end_ms: at_ms,
            models: vec![ModelWindow {
                model: "bc".into(),
                version: "1".into(),
                slot: Slot::Primary,
                requests: 3,
                errors: 0,
                rows: 3,
                latency_us: LogHistogram::default(),
                top_score: LogHistogram::default(),
                label_counts: Default::default(),
            }],
            system: SystemStats::default(),
            prediction_log: LogWindow::default(),
            outbox: OutboxStats::default(),
        }
    }

    fn predictions(at_ms: u64, id: u64) -> PredictionBatch {
        PredictionBatch {
            sampling: outpost_shared::protocol::vocab::Sampling::All,
            records: vec![PredictionRecord {
                id,
                at_ms,
                model: "bc".into(),
                version: "1".into(),
                slot: Slot::Primary,
                latency_us: 1,
                inputs: RecordedInputs::Dropped,
                outputs: Vec::new(),
                top_score: None,
            }],
        }
    }

    fn label(at_ms: u64, id: u64) -> FeedbackBatch {
        FeedbackBatch {
            labels: vec![LabelledPrediction {
                prediction_id: id,
                model: "bc".into(),
                version: "1".into(),
                slot: Slot::Primary,
                predicted_at_ms: at_ms,
                labelled_at_ms: at_ms + 1,
                predicted: Some(1),
                label: 1,
            }],
            unknown: 0,
            evicted: 0,
        }
    }

    fn drift(at_ms: u64) -> DriftReport {
        let m = ModelDrift {
            model: "bc".into(),
            version: "1".into(),
            window_rows: 1,
            rows_seen: 1,
            features: Vec::new(),
            prediction: None,
        };
        DriftReport { at_ms, models: vec![m] }
    }

    /// One device's traffic, drift, predictions and labels at 1,000,000 and 5,000,000 ms, and a
    /// device that sent drift verdicts only before the cutoff the tests prune at.
    fn fill(
        slos: &crate::monitoring::slo::Slos,
        history: &report::History,
        index: &crate::monitoring::dataset::Predictions,
        labels: &crate::monitoring::quality::Labels,
    ) {
        for (at, id) in [(1_000_000, 1), (5_000_000, 2)] {
            let site = [("site".to_owned(), "berlin".to_owned())].into();
            slos.put_report("dev", &site, &report(at)).unwrap();
            history.put("dev", &drift(at)).unwrap();
            index.put("dev", &predictions(at, id)).unwrap();
            labels.put("dev", &site, &label(at, id)).unwrap();
        }
        history.put("old-dev", &drift(1_000_000)).unwrap();
    }

    #[test]
    fn history_older_than_the_cutoff_goes_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let slos = crate::monitoring::slo::Slos::open(&store).unwrap();
        let history = report::History::open(&store).unwrap();
        let index = crate::monitoring::dataset::Predictions::open(&store).unwrap();
        let labels = crate::monitoring::quality::Labels::open(&store).unwrap();
        fill(&slos, &history, &index, &labels);
        let pruned = prune(&store, 2_000_000).unwrap();
        // The report and the label at 1,000,000 ms fill the minute from 960,000 (gone: it ended
        // before the cutoff) and the hour from 0 (kept: it runs to 3,599,999) of their trees;
        // 5,000,000 ms is in newer ones. The same for the buckets of the device's label.
        let expected =
            Pruned { traffic: 1, rollups: 5, drift_history: 3, predictions: 1, labels: 1, shadow: 0 };
        assert_eq!(pruned, expected);
        assert_eq!(prune(&store, 2_000_000).unwrap(), Pruned::default(), "nothing twice");
        for tree in ["traffic_1h", "labels_1h", "traffic_by_label_1h", "labels_by_label_1h", "drift_1h"] {
            assert_eq!(store.tree(tree).unwrap().len(), 2, "{tree}: an hour partly inside the cutoff stays");
        }
        let newer =
            ["traffic", "traffic_1m", "labels_1m", "traffic_by_label_1m", "labels_by_label_1m", "drift_1m"];
        for tree in newer.into_iter().chain(["drift_history", "predictions", "labels"]) {
            assert_eq!(store.tree(tree).unwrap().len(), 1, "{tree} keeps the newer entry");
        }
        assert!(labels.get("bc", "dev", 2).unwrap().is_some());
        assert_eq!(store.tree("drift_devices").unwrap().len(), 1, "the device with a newer verdict stays");
    }

    /// The same history on PostgreSQL (one replica: one shard's roll-up rows): the same rows go.
    #[test]
    fn on_postgres_history_older_than_the_cutoff_goes_and_the_rest_stays() {
        let db = crate::base::pg::store::testing::TestDatabase::new();
        let pg = db.store();
        let slos = crate::monitoring::slo::Slos::open_postgres(&pg);
        let history = report::History::open_postgres(&pg);
        let index = crate::monitoring::dataset::Predictions::open_postgres(&pg);
        let labels = crate::monitoring::quality::Labels::open_postgres(&pg);
        fill(&slos, &history, &index, &labels);
        let expected =
            Pruned { traffic: 1, rollups: 5, drift_history: 3, predictions: 1, labels: 1, shadow: 0 };
        assert_eq!(pg::prune(&pg, 2_000_000).unwrap(), expected);
        assert_eq!(pg::prune(&pg, 2_000_000).unwrap(), Pruned::default(), "nothing twice");
        let count = |sql: &str| -> i64 { pg.with(|c| c.query_one(sql, &[])?.try_get(0)).unwrap() };
        for table in ["outpost_traffic_rollups", "outpost_label_rollups"] {
            // Per table: the hour from 0 and the newer minute and hour, by version and by site.
            assert_eq!(count(&format!("SELECT count(*) FROM {table}")), 6, "{table}");
        }
        assert_eq!(
            count("SELECT count(*) FROM outpost_drift_rollups"),
            3,
            "drift: the hour from 0, and newer"
        );
        for table in [
            "outpost_traffic",
            "outpost_drift_verdicts",
            "outpost_predictions",
            "outpost_labels",
            "outpost_label_changes",
        ] {
            assert_eq!(count(&format!("SELECT count(*) FROM {table}")), 1, "{table} keeps the newer entry");
        }
        assert_eq!(
            count("SELECT count(*) FROM outpost_drift_devices"),
            1,
            "the device with a newer verdict stays"
        );
        assert!(labels.get("bc", "dev", 2).unwrap().is_some());
        assert_eq!(
            slos.rolled_up("bc", 4_000_000, 6_000_000).unwrap().requests,
            report(5_000_000).models[0].requests
        );
    }
}
