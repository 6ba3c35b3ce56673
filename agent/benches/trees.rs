//! Tree-ensemble benchmark: our kernel (through the shared runtime's `Model::run`, as the agent
//! runs it) against onnxruntime single-threaded on the same models and the same rows, in one
//! run, at batch 1 and 64 — plus tract's own implementation where it loads, for scale.
//!
//! `cargo bench -p outpost-agent --bench trees` prints rows/s for each model and batch size
//! and the ratio to onnxruntime. onnxruntime runs in `agent/benches/ort_trees.py` under the
//! Python in `OUTPOST_BENCH_PYTHON` (default: the fixtures venv
//! `/tmp/outpost-fixtures-venv/bin/python`, made by `bash tests/fixtures/make_models.sh`, else
//! `python3`); its batch-1 figures include one Python call (`call floor`, printed). Both
//! sides time only the run calls. `BENCH_SECONDS` sets the time per measurement (default 2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use outpost_shared::Model;
use outpost_shared::reference::Reference;
use serde_json::Value;
use tract_onnx::prelude::*;

const STEMS: [&str; 6] = [
    "breast_cancer_rf-1.0.0",
    "breast_cancer_gbm-1.0.0",
    "breast_cancer_xgb-1.0.0",
    "breast_cancer_lgbm-1.0.0",
    "digits_rf-1.0.0",
    "diabetes_rf-1.0.0",
];
const BATCHES: [usize; 2] = [1, 64];

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

fn seconds() -> f64 {
    std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0)
}

/// The held-out rows of a fixture: (flat f32 data, rows, features).
fn heldout(stem: &str) -> (Vec<f32>, usize, usize) {
    let reference = Reference::load(&models_dir().join(format!("{stem}.reference.json"))).unwrap();
    let input = &reference.inputs[0];
    let data: Vec<f32> = input.data.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    (data, input.shape[0], input.shape[1])
}

/// Distinct batches walking through the held-out rows, wrapping around (as the Python side).
fn batches(data: &[f32], rows: usize, width: usize, batch: usize) -> Vec<Tensor> {
    (0..rows.max(batch))
        .step_by(batch)
        .map(|start| {
            let flat: Vec<f32> = (0..batch)
                .flat_map(|i| data[((start + i) % rows) * width..][..width].iter().copied())
                .collect();
            Tensor::from_shape(&[batch, width], &flat).unwrap()
        })
        .collect()
}

struct Measured {
    rows_per_s: f64,
    p50: Duration,
}

/// Runs `run` over the batches for the time budget; times only the calls.
fn measure(feeds: &[Tensor], budget: Duration, mut run: impl FnMut(Tensor)) -> Measured {
    for t in feeds.iter().take(50) {
        run(t.clone());
    }
    let mut times = Vec::new();
    let mut rows = 0usize;
    let deadline = Instant::now() + budget;
    for i in 0.. {
        let t = feeds[i % feeds.len()].clone();
        rows += t.shape()[0];
        let started = Instant::now();
        run(t);
        let now = Instant::now();
        times.push(now - started);
        if now >= deadline {
            break;
        }
    }
    let total: Duration = times.iter().sum();
    times.sort();
    Measured { rows_per_s: rows as f64 / total.as_secs_f64(), p50: times[times.len() / 2] }
}

fn python() -> String {
    std::env::var("OUTPOST_BENCH_PYTHON").unwrap_or_else(|_| {
        let venv = "/tmp/outpost-fixtures-venv/bin/python";
        if Path::new(venv).exists() { venv.into() } else { "python3".into() }
    })
}

/// onnxruntime's figures from the Python helper, or why there are none.
fn onnxruntime(secs: f64) -> Result<Value, String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/ort_trees.py");
    let output = Command::new(python())
        .arg(&script)
        .arg("--models-dir")
        .arg(models_dir())
        .arg("--seconds")
        .arg(secs.to_string())
        .arg("--batch")
        .arg(BATCHES.map(|b| b.to_string()).join(","))
        .args(STEMS)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python()))?;
    if !output.status.success() {
        return Err(format!("{} failed: {}", python(), String::from_utf8_lossy(&output.stderr).trim()));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("unreadable helper output: {e}"))
}

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() {
    let secs = seconds();
    println!("tree ensembles: Outpost kernel vs onnxruntime (1 thread), same rows, {secs} s per measurement");
    eprintln!("measuring onnxruntime (Python helper)…");
    let ort = onnxruntime(secs);
    if let Err(e) = &ort {
        println!("onnxruntime: skipped ({e})");
    }
    println!(
        "\n{:<26} {:>5} {:>14} {:>9} {:>16} {:>9} {:>8} {:>15}",
        "model", "batch", "outpost rows/s", "p50 µs", "onnxruntime r/s", "p50 µs", "ratio", "tract own r/s"
    );
    let mut worst: Option<(f64, String)> = None;
    for stem in STEMS {
        let path = models_dir().join(format!("{stem}.onnx"));
        let model = Model::load_file(&path).unwrap();
        // tract's own tree ensemble (its plain parser), for scale: it refuses some of these.
        let tract_own =
            onnx().model_for_path(&path).and_then(|m| m.into_optimized()).and_then(|m| m.into_runnable());
        let (data, rows, width) = heldout(stem);
        for batch in BATCHES {
            eprintln!("measuring {stem} batch {batch}…");
            let feeds = batches(&data, rows, width, batch);
            let ours = measure(&feeds, Duration::from_secs_f64(secs), |t| {
                std::hint::black_box(model.run(vec![t]).unwrap());
            });
            let tract = match &tract_own {
                Ok(plan) => {
                    let m = measure(&feeds, Duration::from_secs_f64(secs.min(1.0)), |t| {
                        std::hint::black_box(plan.run(tvec!(t.into_tvalue())).unwrap());
                    });
                    thousands(m.rows_per_s)
                }
                Err(_) => "refused".into(),
            };
            let theirs = ort.as_ref().ok().map(|v| &v["models"][stem][batch.to_string()]);
            let (ort_rows, ort_p50, ratio) =
                match theirs.and_then(|t| Some((t["rows_per_s"].as_f64()?, t["p50_us"].as_f64()?))) {
                    Some((r, p)) => {
                        let ratio = ours.rows_per_s / r;
                        if worst.as_ref().is_none_or(|(w, _)| ratio < *w) {
                            worst = Some((ratio, format!("{stem} batch {batch}")));
                        }
                        (thousands(r), format!("{p:.1}"), format!("{ratio:.2}x"))
                    }
                    None => ("-".into(), "-".into(), "-".into()),
                };
            println!(
                "{:<26} {:>5} {:>14} {:>9.1} {:>16} {:>9} {:>8} {:>15}",
                stem,
                batch,
                thousands(ours.rows_per_s),
                ours.p50.as_secs_f64() * 1e6,
                ort_rows,
                ort_p50,
                ratio,
                tract
            );
        }
    }
    if let Ok(v) = &ort {
        println!(
            "\nonnxruntime {} via Python: one InferenceSession.run call costs {:.1} µs on its own \
             (Identity model, batch 1) — included in its batch-1 figures.",
            v["onnxruntime"].as_str().unwrap_or("?"),
            v["call_floor_us"].as_f64().unwrap_or(f64::NAN)
        );
    }
    if let Some((ratio, at)) = worst {
        let verdict = if ratio >= 1.0 { "meets" } else { "MISSES" };
        println!(
            "target (rows/s ≥ onnxruntime's at batch 1 and 64): {verdict} — lowest ratio {ratio:.2}x ({at})"
        );
    }
}
