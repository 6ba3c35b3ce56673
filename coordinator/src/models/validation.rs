//! The validation gate: before a version may be deployed, it runs — with the same runtime the
//! agents use — over a labelled hold-out set on this machine, and must pass.
//!
//! It checks the dataset against the model's schema (the manifest's baseline feature names
//! pick the columns when the bundle has a baseline; otherwise every column but the label and
//! segment, in order), computes accuracy and per-class precision, recall and F1 with
//! scikit-learn's definitions (classes = the labels present in truth or prediction; a ratio
//! with a zero denominator is 0; macro = unweighted mean over classes; weighted F1 weighs by
//! true support) overall and per segment, times single-row runs (p50/p95/p99), runs the edge
//! cases (empty batch, extreme values, NaN) against the model's NaN policy, and compares with
//! the current production version's recorded metrics under the policy's thresholds.
//!
//! The gate scores classifiers: the model needs an integer `label` output (or exactly one
//! integer output). Regressors are refused with that reason.

use std::collections::BTreeMap;
use std::time::Instant;

use outpost_shared::bundle::{Bundle, NanPolicy};
use outpost_shared::runtime::ProvidedInput;
use outpost_shared::{DataType, Model, Tensor};
use serde::{Deserialize, Serialize};

use crate::models::packaging::{PackagingError, Table};

/// Thresholds a version must meet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Absolute floor for overall accuracy.
    pub min_accuracy: Option<f64>,
    /// Largest drop in accuracy vs production (absolute, e.g. 0.01 = one point).
    pub max_accuracy_drop: f64,
    /// Largest drop in macro F1 vs production (absolute).
    pub max_f1_drop: f64,
    /// Largest p99 latency vs production's, as a ratio …
    pub max_p99_ratio: f64,
    /// … plus this many milliseconds: at microsecond latencies a ratio alone is noise.
    pub p99_slack_ms: f64,
}

/// Why a validation run could not run (a failed gate is a [`Report`] with failures, not this).
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("{field} must be a finite number ≥ 0, got {value}")]
    Threshold { field: &'static str, value: f64 },
    #[error("the model cannot be loaded: {0}")]
    Load(String),
    #[error("the gate takes models with one 2-D float input [N, features]")]
    InputShape,
    #[error("the gate scores classifiers: the model has no integer label output")]
    NoLabelOutput,
    #[error("the model has several integer outputs and none is named `label`")]
    AmbiguousLabel,
    #[error(transparent)]
    Dataset(#[from] PackagingError),
    #[error("the dataset has no column `{feature}`, a feature of {model}")]
    MissingFeature { feature: String, model: String },
    #[error("schema: the dataset gives {given} feature columns but the model takes {takes}")]
    Width { given: usize, takes: i64 },
    #[error("row {row}: label `{text}` is not an integer class")]
    NonIntegerLabel { row: usize, text: String },
    #[error("the label output has {values} values for {rows} rows")]
    OutputRows { values: usize, rows: usize },
    #[error("inference failed: {0}")]
    Inference(String),
}

impl Policy {
    /// Checks the thresholds are usable numbers.
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (what, v) in [
            ("max_accuracy_drop", Some(self.max_accuracy_drop)),
            ("max_f1_drop", Some(self.max_f1_drop)),
            ("max_p99_ratio", Some(self.max_p99_ratio)),
            ("p99_slack_ms", Some(self.p99_slack_ms)),
            ("min_accuracy", self.min_accuracy),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(ValidationError::Threshold { field: what, value: v });
            }
        }
        Ok(())
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_accuracy: None,
            max_accuracy_drop: 0.01,
            max_f1_drop: 0.02,
            max_p99_ratio: 2.0,
            p99_slack_ms: 0.5,
        }
    }
}

/// One class's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

/// Classification metrics over a set of rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub rows: u64,
    pub accuracy: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub weighted_f1: f64,
    pub classes: BTreeMap<String, ClassMetrics>,
}

impl Metrics {
    /// scikit-learn's accuracy and precision_recall_fscore_support (zero_division=0).
    pub fn compute(truth: &[i64], predicted: &[i64]) -> Metrics {
        let mut confusion = BTreeMap::new();
        for (&t, &p) in truth.iter().zip(predicted) {
            *confusion.entry((t, p)).or_insert(0u64) += 1;
        }
        Metrics::from_confusion(&confusion)
    }

    /// The same from counts of `(truth, predicted)` pairs: what summed roll-ups hold. Classes
    /// are those that occur as truth or prediction in a pair counted at least once.
    pub fn from_confusion(confusion: &BTreeMap<(i64, i64), u64>) -> Metrics {
        let confusion: Vec<((i64, i64), u64)> =
            confusion.iter().filter(|(_, n)| **n > 0).map(|(k, n)| (*k, *n)).collect();
        let mut classes: Vec<i64> = confusion.iter().flat_map(|((t, p), _)| [*t, *p]).collect();
        classes.sort_unstable();
        classes.dedup();
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let mut per = BTreeMap::new();
        let mut ordered = Vec::new();
        for &c in &classes {
            let count = |keep: &dyn Fn(i64, i64) -> bool| -> u64 {
                confusion.iter().filter(|((t, p), _)| keep(*t, *p)).map(|(_, n)| n).sum()
            };
            let tp = count(&|t, p| t == c && p == c);
            let support = count(&|t, _| t == c);
            let predicted_c = count(&|_, p| p == c);
            let m = ClassMetrics {
                precision: ratio(tp, predicted_c),
                recall: ratio(tp, support),
                f1: ratio(2 * tp, support + predicted_c),
                support,
            };
            ordered.push(m.clone());
            per.insert(c.to_string(), m);
        }
        let n = ordered.len().max(1) as f64;
        let total: u64 = ordered.iter().map(|m| m.support).sum();
        let rows: u64 = confusion.iter().map(|(_, n)| n).sum();
        let correct: u64 = confusion.iter().filter(|((t, p), _)| t == p).map(|(_, n)| n).sum();
        Metrics {
            rows,
            accuracy: ratio(correct, rows),
            macro_precision: ordered.iter().map(|m| m.precision).sum::<f64>() / n,
            macro_recall: ordered.iter().map(|m| m.recall).sum::<f64>() / n,
            macro_f1: ordered.iter().map(|m| m.f1).sum::<f64>() / n,
            weighted_f1: if total == 0 {
                0.0
            } else {
                ordered.iter().map(|m| m.f1 * m.support as f64).sum::<f64>() / total as f64
            },
            classes: per,
        }
    }
}

/// Single-row latency on this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub runs: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// One edge case and how the model met it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeCase {
    pub case: String,
    pub outcome: String,
    pub passed: bool,
}

/// One comparison with the production version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub check: String,
    pub production: f64,
    pub candidate: f64,
    pub limit: f64,
    pub passed: bool,
}

/// Everything the gate found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub model: String,
    pub version: String,
    pub dataset_sha256: String,
    pub label: String,
    pub segment: Option<String>,
    pub features: Vec<String>,
    pub metrics: Metrics,
    pub segments: BTreeMap<String, Metrics>,
    pub latency: Latency,
    pub edge_cases: Vec<EdgeCase>,
    pub policy: Policy,
    /// The production version compared against, if there is one.
    pub baseline_version: Option<String>,
    /// The production version's latency, timed in the same run as the candidate's (absent when
    /// its bundle was not at hand: the comparison then used its recorded figures).
    #[serde(default)]
    pub baseline_latency: Option<Latency>,
    pub regression: Vec<Check>,
    pub passed: bool,
    /// Why it failed, one line per reason.
    pub failures: Vec<String>,
    pub validated_at_ms: u64,
}

/// Which output holds the predicted class.
fn label_output(model: &Model) -> Result<usize, ValidationError> {
    let outputs = &model.signature().outputs;
    let is_int = |d: DataType| {
        matches!(
            d,
            DataType::I64
                | DataType::I32
                | DataType::I16
                | DataType::I8
                | DataType::U8
                | DataType::U16
                | DataType::U32
                | DataType::U64
        )
    };
    if let Some(i) = outputs.iter().position(|o| o.name == "label" && is_int(o.datatype)) {
        return Ok(i);
    }
    let ints: Vec<usize> = (0..outputs.len()).filter(|&i| is_int(outputs[i].datatype)).collect();
    match ints.as_slice() {
        [one] => Ok(*one),
        [] => Err(ValidationError::NoLabelOutput),
        _ => Err(ValidationError::AmbiguousLabel),
    }
}

fn input_tensor(model: &Model, rows: &[Vec<f32>]) -> Result<Tensor, ValidationError> {
    let spec = &model.signature().inputs[0];
    let width = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let tensor = tract_ndarray_from(rows.len(), width, flat)?;
    if spec.datatype == DataType::F64 {
        return tensor
            .cast_to::<f64>()
            .map(|t| t.into_owned())
            .map_err(|e| ValidationError::Inference(e.to_string()));
    }
    Ok(tensor)
}

fn tract_ndarray_from(n: usize, width: usize, flat: Vec<f32>) -> Result<Tensor, ValidationError> {
    Tensor::from_shape(&[n, width], &flat).map_err(|e| ValidationError::Inference(e.to_string()))
}

fn predict(model: &Model, rows: &[Vec<f32>], label: usize) -> Result<Vec<i64>, ValidationError> {
    let outputs =
        model.run(vec![input_tensor(model, rows)?]).map_err(|e| ValidationError::Inference(e.to_string()))?;
    let values = outpost_shared::reference::as_f64(&outputs[label])
        .map_err(|e| ValidationError::Inference(e.to_string()))?;
    if values.len() != rows.len() {
        return Err(ValidationError::OutputRows { values: values.len(), rows: rows.len() });
    }
    Ok(values.iter().map(|&v| v as i64).collect())
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The regression checks against the production version's report, and why any failed.
pub fn compare(
    prod: &Report,
    metrics: &Metrics,
    latency: &Latency,
    policy: &Policy,
) -> (Vec<Check>, Vec<String>) {
    let checks = [
        (
            "accuracy",
            prod.metrics.accuracy,
            metrics.accuracy,
            prod.metrics.accuracy - policy.max_accuracy_drop,
            true,
        ),
        (
            "macro_f1",
            prod.metrics.macro_f1,
            metrics.macro_f1,
            prod.metrics.macro_f1 - policy.max_f1_drop,
            true,
        ),
        (
            "p99_ms",
            prod.latency.p99_ms,
            latency.p99_ms,
            prod.latency.p99_ms * policy.max_p99_ratio + policy.p99_slack_ms,
            false,
        ),
    ];
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for (name, production, candidate, limit, higher_is_better) in checks {
        let passed = if higher_is_better { candidate >= limit } else { candidate <= limit };
        if !passed {
            failures.push(format!(
                "{name} {candidate:.4} vs production {} {production:.4}: beyond the limit {limit:.4}",
                prod.version
            ));
        }
        out.push(Check { check: name.into(), production, candidate, limit, passed });
    }
    (out, failures)
}

/// How many times latency is measured before a slower candidate is judged slower.
const LATENCY_ROUNDS: u32 = 3;

/// The version a candidate is compared with: its last report and, when the registry still
/// holds it, its bundle (so its latency can be timed again beside the candidate's).
pub struct Production<'a> {
    pub report: &'a Report,
    pub bundle: Option<&'a Bundle>,
}

/// Whether the candidate's p99 is within the policy, against the fresh baseline if there is one.
fn latency_within(
    prod: &Production<'_>,
    fresh: Option<&Latency>,
    latency: &Latency,
    policy: &Policy,
) -> bool {
    let base = fresh.unwrap_or(&prod.report.latency);
    latency.p99_ms <= base.p99_ms * policy.max_p99_ratio + policy.p99_slack_ms
}

/// Times single-row runs of each model, interleaved row by row (the order alternating), after a
/// warm-up; one [`Latency`] per model, in the order given.
fn time_single_rows(models: &[(&Model, usize)], rows: &[Vec<f32>]) -> Result<Vec<Latency>, ValidationError> {
    let runs = 300.min(rows.len() * 10).max(1);
    for &(model, label) in models {
        for r in rows.iter().take(10) {
            predict(model, std::slice::from_ref(r), label)?;
        }
    }
    let mut times = vec![Vec::with_capacity(runs); models.len()];
    for i in 0..runs {
        let row = std::slice::from_ref(&rows[i % rows.len()]);
        for k in 0..models.len() {
            let k = if i % 2 == 0 { k } else { models.len() - 1 - k };
            let (model, label) = models[k];
            let started = Instant::now();
            predict(model, row, label)?;
            times[k].push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            Latency {
                runs: runs as u64,
                p50_ms: quantile(&t, 0.5),
                p95_ms: quantile(&t, 0.95),
                p99_ms: quantile(&t, 0.99),
            }
        })
        .collect())
}

/// Runs the gate. `production` is the current production version, if any.
pub fn run(
    bundle: &Bundle,
    table: &Table,
    label: &str,
    segment: Option<&str>,
    policy: &Policy,
    production: Option<&Production<'_>>,
) -> Result<Report, ValidationError> {
    let manifest = &bundle.manifest;
    let (model, _) = bundle.load_model().map_err(|e| ValidationError::Load(e.to_string()))?;
    let signature = model.signature();
    if signature.inputs.len() != 1
        || !signature.inputs[0].datatype.is_float()
        || signature.inputs[0].shape.len() != 2
    {
        return Err(ValidationError::InputShape);
    }
    let label_index = label_output(&model)?;
    let label_col = table.column(label)?;
    let segment_col = segment.map(|s| table.column(s)).transpose()?;
    table.numeric(label_col)?;
    let features: Vec<usize> = match &manifest.baseline {
        Some(baseline) => baseline
            .features
            .iter()
            .map(|f| {
                table.column(&f.name).map_err(|_| ValidationError::MissingFeature {
                    feature: f.name.clone(),
                    model: format!("{}@{}", manifest.name, manifest.version),
                })
            })
            .collect::<Result<_, _>>()?,
        None => table.features(&[Some(label_col), segment_col].into_iter().flatten().collect::<Vec<_>>()),
    };
    let width = outpost_shared::runtime::Dim::v2(&signature.inputs[0].shape[1]);
    if usize::try_from(width).ok() != Some(features.len()) {
        return Err(ValidationError::Width { given: features.len(), takes: width });
    }
    for &f in &features {
        table.numeric(f)?;
    }
    let rows: Vec<Vec<f32>> =
        table.rows.iter().map(|r| features.iter().map(|&f| r[f] as f32).collect()).collect();
    let mut truth = Vec::with_capacity(rows.len());
    for (i, r) in table.rows.iter().enumerate() {
        let v = r[label_col];
        if !v.is_finite() || v.fract() != 0.0 {
            return Err(ValidationError::NonIntegerLabel {
                row: i + 1,
                text: table.text[i][label_col].clone(),
            });
        }
        truth.push(v as i64);
    }
    let mut failures = Vec::new();
    let predicted = predict(&model, &rows, label_index)?;
    let metrics = Metrics::compute(&truth, &predicted);
    let mut segments = BTreeMap::new();
    if let Some(sc) = segment_col {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, row) in table.text.iter().enumerate() {
            groups.entry(row[sc].clone()).or_default().push(i);
        }
        for (name, idx) in groups {
            let t: Vec<i64> = idx.iter().map(|&i| truth[i]).collect();
            let p: Vec<i64> = idx.iter().map(|&i| predicted[i]).collect();
            segments.insert(name, Metrics::compute(&t, &p));
        }
    }

    // Latency: single rows, cycling through the data, after a warm-up. With the production
    // model at hand it is timed in the same loop, row for row, so a busy machine slows both
    // alike; the candidate is compared with that, not with a figure from another day.
    // A production model that no longer loads, or takes other inputs than these rows, is not
    // the candidate's fault: its recorded figures stand in.
    let takes_these_rows = |m: &Model| {
        let inputs = &m.signature().inputs;
        inputs.len() == 1
            && inputs[0].datatype.is_float()
            && inputs[0].shape.len() == 2
            && usize::try_from(outpost_shared::runtime::Dim::v2(&inputs[0].shape[1])).ok()
                == Some(features.len())
    };
    let production_model = production
        .and_then(|p| p.bundle)
        .and_then(|b| b.load_model().ok())
        .filter(|(m, _)| takes_these_rows(m))
        .and_then(|(m, _)| label_output(&m).ok().map(|l| (m, l)));
    let timed = |rounds_left: &mut u32| -> Result<(Latency, Option<Latency>), ValidationError> {
        *rounds_left -= 1;
        let mut models = vec![(&model, label_index)];
        if let Some((m, l)) = production_model.as_ref() {
            models.push((m, *l));
        }
        let mut latencies = time_single_rows(&models, &rows)?;
        let baseline = if latencies.len() > 1 { latencies.pop() } else { None };
        let candidate =
            latencies.pop().ok_or_else(|| ValidationError::Inference("nothing was timed".into()))?;
        Ok((candidate, baseline))
    };
    let mut rounds_left = LATENCY_ROUNDS;
    let (mut latency, mut baseline_latency) = timed(&mut rounds_left)?;
    // A regression must show in every round: one preempted sample in 300 is a p99 on its own.
    while rounds_left > 0
        && let Some(prod) = production
        && !latency_within(prod, baseline_latency.as_ref(), &latency, policy)
    {
        (latency, baseline_latency) = timed(&mut rounds_left)?;
    }

    // Edge cases, as the agent would meet them.
    let mut edge_cases = Vec::new();
    let shape = [0usize, features.len()];
    let empty = signature.check_inputs(&[ProvidedInput {
        name: &signature.inputs[0].name,
        datatype: signature.inputs[0].datatype,
        shape: &shape,
    }]);
    edge_cases.push(EdgeCase {
        case: "empty batch".into(),
        outcome: match empty {
            Err(e) => format!("refused before the model runs (400): {e}"),
            Ok(_) => "accepted".into(),
        },
        passed: true,
    });
    for (case, value) in [("extreme values (±3.4e38)", f32::MAX), ("large values (1e30)", 1e30f32)] {
        let extreme: Vec<Vec<f32>> = vec![vec![value; features.len()], vec![-value; features.len()]];
        let outcome = predict(&model, &extreme, label_index);
        edge_cases.push(EdgeCase {
            case: case.into(),
            passed: outcome.is_ok(),
            outcome: match outcome {
                Ok(labels) => format!("ran; labels {labels:?}"),
                Err(e) => format!("failed: {e}"),
            },
        });
    }
    let nan_row = vec![vec![f32::NAN; features.len()]];
    edge_cases.push(match manifest.nan_policy {
        NanPolicy::Reject => EdgeCase {
            case: "NaN input".into(),
            outcome: "refused by the model's NaN policy (`reject`: the agent answers 400)".into(),
            passed: true,
        },
        NanPolicy::Allow => {
            let outcome = predict(&model, &nan_row, label_index);
            EdgeCase {
                case: "NaN input".into(),
                passed: outcome.is_ok(),
                outcome: match outcome {
                    Ok(labels) => format!("ran (policy `allow`); labels {labels:?}"),
                    Err(e) => format!("failed under policy `allow`: {e}"),
                },
            }
        }
    });
    for e in edge_cases.iter().filter(|e| !e.passed) {
        failures.push(format!("edge case `{}`: {}", e.case, e.outcome));
    }

    if let Some(floor) = policy.min_accuracy
        && metrics.accuracy < floor
    {
        failures.push(format!("accuracy {:.4} is below the floor {floor:.4}", metrics.accuracy));
    }
    let regression = match production {
        Some(prod) => {
            let mut prod = prod.report.clone();
            if let Some(fresh) = &baseline_latency {
                prod.latency = fresh.clone();
            }
            let (checks, failed) = compare(&prod, &metrics, &latency, policy);
            failures.extend(failed);
            checks
        }
        None => Vec::new(),
    };
    Ok(Report {
        model: manifest.name.clone(),
        version: manifest.version.clone(),
        dataset_sha256: table.sha256.clone(),
        label: label.to_owned(),
        segment: segment.map(str::to_owned),
        features: features.iter().map(|&f| table.columns[f].clone()).collect(),
        metrics,
        segments,
        latency,
        edge_cases,
        policy: policy.clone(),
        baseline_version: production.map(|p| p.report.version.clone()),
        baseline_latency,
        regression,
        passed: failures.is_empty(),
        failures,
        validated_at_ms: crate::base::store::now_ms(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_follow_scikit_learn_definitions() {
        // sklearn: precision_recall_fscore_support([0,0,1,1,2], [0,1,1,1,0], zero_division=0)
        let m = Metrics::compute(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0]);
        assert_eq!(m.accuracy, 0.6);
        assert_eq!(m.classes["0"].precision, 0.5);
        assert_eq!(m.classes["1"].precision, 2.0 / 3.0);
        assert_eq!(m.classes["2"], ClassMetrics { precision: 0.0, recall: 0.0, f1: 0.0, support: 1 });
        assert!((m.classes["1"].f1 - 0.8).abs() < 1e-12);
        assert!((m.macro_f1 - (0.5 + 0.8 + 0.0) / 3.0).abs() < 1e-12);
        assert!((m.weighted_f1 - (0.5 * 2.0 + 0.8 * 2.0) / 5.0).abs() < 1e-12);
    }

    #[test]
    fn regressions_are_judged_against_production_with_the_policy() {
        let metrics = |accuracy: f64, f1: f64| Metrics {
            rows: 100,
            accuracy,
            macro_precision: f1,
            macro_recall: f1,
            macro_f1: f1,
            weighted_f1: f1,
            classes: BTreeMap::new(),
        };
        let latency = |p99_ms: f64| Latency { runs: 300, p50_ms: p99_ms / 2.0, p95_ms: p99_ms, p99_ms };
        let prod = Report {
            model: "bc".into(),
            version: "1.0.0".into(),
            dataset_sha256: String::new(),
            label: "label".into(),
            segment: None,
            features: Vec::new(),
            metrics: metrics(0.95, 0.94),
            segments: BTreeMap::new(),
            latency: latency(1.0),
            edge_cases: Vec::new(),
            policy: Policy::default(),
            baseline_version: None,
            baseline_latency: None,
            regression: Vec::new(),
            passed: true,
            failures: Vec::new(),
            validated_at_ms: 0,
        };
        let policy = Policy::default();
        // Within every limit: a point less accuracy, a slower p99 up to 2x + 0.5 ms.
        let (checks, failures) = compare(&prod, &metrics(0.941, 0.93), &latency(2.4), &policy);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(checks.len(), 3);
        // Beyond them, each named with its numbers.
        let (_, failures) = compare(&prod, &metrics(0.90, 0.80), &latency(2.6), &policy);
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures[0].starts_with("accuracy 0.9000 vs production 1.0.0 0.9500"), "{failures:?}");
        assert!(failures[2].contains("limit 2.5000"), "{failures:?}");
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
    }
}

/// One run of the gate: the dataset's label column, an optional segment column, and the
/// model's stored thresholds each overridable for this run (`?min_accuracy=` and so on).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateOptions {
    pub label: String,
    pub segment: Option<String>,
    pub min_accuracy: Option<f64>,
    pub max_accuracy_drop: Option<f64>,
    pub max_f1_drop: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    pub p99_slack_ms: Option<f64>,
}
