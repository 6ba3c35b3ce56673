//! Drift windows: what a model version sees now, against the baseline its bundle carries.
//!
//! When a bundle with a baseline loads, its version gets a [`DriftMonitor`]: the baseline's
//! reference sample per feature, the model's own predictions on that sample (run once at load),
//! and a sliding window of the most recent `drift.window_rows` rows — per feature and of the
//! predictions. Memory is bounded by `features × window_rows × 8` bytes per loaded version,
//! whatever the traffic. the server loop's `evaluate_drift` runs the tests of `outpost_shared::drift` (the test
//! chosen by sample size, or per model and feature by `[drift.models]`), publishes them in
//! `/metrics`, and hands them to the reporter for the coordinator.
//!
//! A model is monitored when its first input is a rank-2 FP32/FP64 tensor `[N, F]` whose `F`
//! columns are the baseline's features, in order (what `outpostctl bundle create --baseline`
//! records). Models served from plain files have no baseline and are not monitored.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use outpost_shared::bundle::Baseline;
use outpost_shared::drift::{self, DriftPolicy, DriftTest, FeatureKind};
use outpost_shared::protocol::messages::{FeatureDrift, ModelDrift};
use outpost_shared::runtime::Dim;
use outpost_shared::tensor::{datatype_of, slice};
use outpost_shared::{DataType, Model, Tensor};
use serde::{Deserialize, Serialize};

/// The feature name under which prediction drift is reported (and configured).
pub const PREDICTION: &str = "_prediction";

/// `[drift]` in the agent's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Most recent rows kept per model version.
    pub window_rows: usize,
    /// Fewer values than this in a window: no verdict yet for that feature.
    pub min_rows: usize,
    /// Seconds between evaluations (each publishes metrics and one report).
    pub interval_secs: u64,
    /// Per model name: a test and threshold for all its features, and per feature
    /// (`_prediction` for the predictions).
    pub models: BTreeMap<String, ModelDriftPolicy>,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig { window_rows: 1000, min_rows: 100, interval_secs: 10, models: BTreeMap::new() }
    }
}

/// One model's drift settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelDriftPolicy {
    pub test: Option<DriftTest>,
    pub threshold: Option<f64>,
    pub features: BTreeMap<String, DriftPolicy>,
}

impl DriftConfig {
    /// Checks what the types cannot: `Err((key, problem))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, problem: &str| Err((key.to_owned(), problem.to_owned()));
        if !(10..=100_000).contains(&self.window_rows) {
            return err("drift.window_rows", "must be between 10 and 100000");
        }
        if self.min_rows == 0 || self.min_rows > self.window_rows {
            return err("drift.min_rows", "must be at least 1 and at most drift.window_rows");
        }
        if self.interval_secs == 0 {
            return err("drift.interval_secs", "must be at least 1");
        }
        for (model, policy) in &self.models {
            let model_level = DriftPolicy { test: policy.test, threshold: policy.threshold };
            for (feature, p) in std::iter::once(("*", &model_level))
                .chain(policy.features.iter().map(|(f, p)| (f.as_str(), p)))
            {
                if let Some(t) = p.threshold {
                    let p_value = p.test.or(policy.test).is_some_and(DriftTest::is_p_value);
                    if !(t.is_finite() && t > 0.0) || (p_value && t >= 1.0) {
                        return Err((
                            format!("drift.models.{model}.features.{feature}.threshold"),
                            format!(
                                "{t} is not a valid threshold (a p-value test needs one in (0, 1), a distance one above 0)"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The policy for one feature of one model: the feature's own, else the model's.
    fn policy(&self, model: &str, feature: &str) -> DriftPolicy {
        let Some(m) = self.models.get(model) else { return DriftPolicy::default() };
        let own = m.features.get(feature).copied().unwrap_or_default();
        DriftPolicy { test: own.test.or(m.test), threshold: own.threshold.or(m.threshold) }
    }
}

/// The reference and the window of one model version.
#[derive(Debug)]
pub struct DriftMonitor {
    features: Vec<String>,
    /// The baseline sample's finite values, per feature.
    reference: Vec<Vec<f64>>,
    /// The model's predictions on the baseline sample, and whether they are labels.
    prediction_reference: Option<(FeatureKind, Vec<f64>)>,
    policies: Vec<DriftPolicy>,
    prediction_policy: DriftPolicy,
    min_rows: usize,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    capacity: usize,
    columns: Vec<VecDeque<f64>>,
    predictions: VecDeque<f64>,
    rows_seen: u64,
    /// `rows_seen` at the last evaluation: nothing new, nothing to report.
    evaluated_at: Option<u64>,
}

fn push(ring: &mut VecDeque<f64>, capacity: usize, value: f64) {
    if ring.len() == capacity {
        ring.pop_front();
    }
    ring.push_back(value);
}

/// A float tensor's values as f64, or `None` for other types.
fn floats(tensor: &Tensor) -> Option<Vec<f64>> {
    match datatype_of(tensor).ok()? {
        DataType::F32 => Some(slice::<f32>(tensor).ok()?.iter().map(|&x| f64::from(x)).collect()),
        DataType::F64 => Some(slice::<f64>(tensor).ok()?.to_vec()),
        _ => None,
    }
}

/// One prediction value per row: the label (an INT64 output with one value per row), else the
/// first float output's value, or its largest value when a row has several (the top score).
fn prediction_values(outputs: &[Tensor], rows: usize) -> Option<(FeatureKind, Vec<f64>)> {
    if rows == 0 {
        return None;
    }
    for t in outputs {
        if datatype_of(t).ok() == Some(DataType::I64) && t.len() == rows {
            let labels = slice::<i64>(t).ok()?.iter().map(|&v| v as f64).collect();
            return Some((FeatureKind::Categorical, labels));
        }
    }
    for t in outputs {
        if t.shape().first() != Some(&rows) || t.len() % rows != 0 {
            continue;
        }
        let Some(values) = floats(t) else { continue };
        let per_row = values.len() / rows;
        let top = values.chunks(per_row).map(|row| row.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        return Some((FeatureKind::Numeric, top.collect()));
    }
    None
}

/// Why a model version cannot be watched for drift (it still serves).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unmonitorable {
    #[error("the model has no inputs")]
    NoInputs,
    #[error("its first input `{input}` is {shape}, not a float matrix of the baseline's {features} features")]
    Shape { input: String, shape: String, features: usize },
}

impl DriftMonitor {
    /// Sets up monitoring of `model` against `baseline`; `Err` says why it cannot be monitored.
    pub fn new(
        model: &Model,
        name: &str,
        baseline: &Baseline,
        config: &DriftConfig,
    ) -> Result<DriftMonitor, Unmonitorable> {
        let signature = model.signature();
        let features: Vec<String> = baseline.features.iter().map(|f| f.name.clone()).collect();
        let first = signature.inputs.first().ok_or(Unmonitorable::NoInputs)?;
        let fits = matches!(first.datatype, DataType::F32 | DataType::F64)
            && first.shape.len() == 2
            && matches!(first.shape[1], Dim::Fixed(n) if n == features.len());
        if !fits {
            return Err(Unmonitorable::Shape {
                input: first.name.clone(),
                shape: format!("{:?} {}", first.datatype, first.shape_string()),
                features: features.len(),
            });
        }
        let mut reference = vec![Vec::new(); features.len()];
        for row in &baseline.sample {
            for (column, value) in reference.iter_mut().zip(row) {
                if let Some(v) = value.filter(|v| v.is_finite()) {
                    column.push(v);
                }
            }
        }
        // The model's own predictions on the complete sample rows: the reference for
        // prediction drift (only for single-input models, which the sample fully describes).
        let complete: Vec<f64> = baseline
            .sample
            .iter()
            .filter(|row| row.len() == features.len() && row.iter().all(|v| v.is_some_and(f64::is_finite)))
            .flat_map(|row| row.iter().map(|v| v.unwrap_or(0.0)))
            .collect();
        let rows = complete.len() / features.len().max(1);
        let prediction_reference = if signature.inputs.len() == 1 && rows > 0 {
            let input = match first.datatype {
                DataType::F64 => Tensor::from_shape(&[rows, features.len()], &complete),
                _ => Tensor::from_shape(
                    &[rows, features.len()],
                    &complete.iter().map(|&v| v as f32).collect::<Vec<f32>>(),
                ),
            };
            input.ok().and_then(|t| model.run(vec![t]).ok()).and_then(|out| prediction_values(&out, rows))
        } else {
            None
        };
        let policies = features.iter().map(|f| config.policy(name, f)).collect();
        Ok(DriftMonitor {
            window: Mutex::new(Window {
                capacity: config.window_rows,
                columns: vec![VecDeque::with_capacity(config.window_rows); features.len()],
                predictions: VecDeque::with_capacity(config.window_rows),
                rows_seen: 0,
                evaluated_at: None,
            }),
            features,
            reference,
            prediction_reference,
            policies,
            prediction_policy: config.policy(name, PREDICTION),
            min_rows: config.min_rows,
        })
    }

    /// Adds a served request's rows: `inputs` in signature order, `outputs` as the model made them.
    pub fn observe(&self, inputs: &[Tensor], outputs: &[Tensor]) {
        let Some(values) = inputs.first().and_then(floats) else { return };
        let width = self.features.len();
        if width == 0 || values.len() % width != 0 {
            return;
        }
        let rows = values.len() / width;
        let predictions = prediction_values(outputs, rows);
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let capacity = w.capacity;
        for row in values.chunks(width) {
            for (column, &v) in w.columns.iter_mut().zip(row) {
                push(column, capacity, v);
            }
        }
        if let Some((_, p)) = predictions {
            for v in p {
                push(&mut w.predictions, capacity, v);
            }
        }
        w.rows_seen += rows as u64;
    }

    /// Tests the window against the reference; `None` when no row arrived since the last time.
    pub fn evaluate(&self, model: &str, version: &str) -> Option<ModelDrift> {
        let (columns, predictions, rows_seen) = {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            if w.evaluated_at == Some(w.rows_seen) {
                return None;
            }
            w.evaluated_at = Some(w.rows_seen);
            let columns: Vec<Vec<f64>> = w.columns.iter().map(|c| c.iter().copied().collect()).collect();
            (columns, w.predictions.iter().copied().collect::<Vec<f64>>(), w.rows_seen)
        };
        let window_rows = columns.first().map_or(0, Vec::len) as u64;
        let features = self
            .features
            .iter()
            .zip(&self.reference)
            .zip(&columns)
            .zip(&self.policies)
            .filter_map(|(((name, reference), current), policy)| {
                self.verdict(name, FeatureKind::Numeric, reference, current, *policy)
            })
            .collect();
        let prediction = self.prediction_reference.as_ref().and_then(|(kind, reference)| {
            self.verdict(PREDICTION, *kind, reference, &predictions, self.prediction_policy)
        });
        Some(ModelDrift {
            model: model.into(),
            version: version.into(),
            window_rows,
            rows_seen,
            features,
            prediction,
        })
    }

    fn verdict(
        &self,
        name: &str,
        kind: FeatureKind,
        reference: &[f64],
        current: &[f64],
        policy: DriftPolicy,
    ) -> Option<FeatureDrift> {
        let finite: Vec<f64> = current.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.len() < self.min_rows || reference.is_empty() {
            return None;
        }
        match drift::detect(kind, reference, &finite, policy) {
            Ok(r) => Some(FeatureDrift {
                feature: name.to_owned(),
                test: r.test,
                score: r.score,
                threshold: r.threshold,
                drifted: r.drifted,
                reference_rows: r.reference_rows as u64,
                current_rows: r.current_rows as u64,
                missing: (current.len() - finite.len()) as u64,
            }),
            Err(e) => {
                tracing::debug!(feature = name, error = %e, "no drift verdict");
                None
            }
        }
    }
}

/// Shared handle to a monitor (one per served version).
pub type SharedMonitor = Arc<DriftMonitor>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_refuses_windows_and_thresholds_that_cannot_work() {
        let mut c = DriftConfig::default();
        c.validate().expect("defaults are valid");
        c.min_rows = 5000;
        assert_eq!(c.validate().unwrap_err().0, "drift.min_rows");
        c.min_rows = 10;
        c.models.insert(
            "bc".into(),
            ModelDriftPolicy {
                test: Some(DriftTest::Ks),
                threshold: None,
                features: BTreeMap::from([("x".into(), DriftPolicy { test: None, threshold: Some(2.0) })]),
            },
        );
        let (key, problem) = c.validate().unwrap_err();
        assert_eq!(key, "drift.models.bc.features.x.threshold", "{problem}");
        assert_eq!(c.policy("bc", "x").test, Some(DriftTest::Ks), "the model's test applies to its features");
    }

    #[test]
    fn the_example_configuration_parses_into_per_feature_policies() {
        let snippet = r#"
            [drift]
            window_rows = 500
            [drift.models.breast_cancer]
            test = "psi"
            threshold = 0.2
            features.mean_radius = { test = "wasserstein", threshold = 0.15 }
            features._prediction = { threshold = 0.01 }
        "#;
        let config: crate::config::Config =
            figment::Figment::from(<figment::providers::Toml as figment::providers::Format>::string(snippet))
                .extract()
                .expect("parses");
        config.drift.validate().expect("valid");
        let p = |f: &str| config.drift.policy("breast_cancer", f);
        assert_eq!(
            p("mean_radius"),
            DriftPolicy { test: Some(DriftTest::Wasserstein), threshold: Some(0.15) }
        );
        assert_eq!(p("mean_texture"), DriftPolicy { test: Some(DriftTest::Psi), threshold: Some(0.2) });
        assert_eq!(p(PREDICTION), DriftPolicy { test: Some(DriftTest::Psi), threshold: Some(0.01) });
        assert_eq!(config.drift.policy("other", "x"), DriftPolicy::default());
    }

    #[test]
    fn the_window_keeps_only_the_most_recent_rows() {
        let mut ring = VecDeque::new();
        for v in 0..10 {
            push(&mut ring, 3, f64::from(v));
        }
        assert_eq!(ring.into_iter().collect::<Vec<_>>(), vec![7.0, 8.0, 9.0]);
    }
}
