//! Our tree-ensemble kernel against onnxruntime 1.31.1 on the hand-made edge cases in
//! `tests/fixtures/models/tree_cases/` (every node mode, NaN and ±∞ inputs, missing-value
//! tracks, aggregates, post-transforms, binary special cases, int and string labels, the
//! `*_as_tensor` forms, FP64 and INT64 inputs): labels exactly, scores within 1e-6.
//! Models load through tract's normal ONNX path with our ops registered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use outpost_shared::runtime::onnx_parser;
use serde_json::Value;
use tract_onnx::prelude::*;

fn cases_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/tree_cases")
}

fn number(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "NaN" => f64::NAN,
        Value::String(s) if s == "Infinity" => f64::INFINITY,
        Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        other => other.as_f64().unwrap_or_else(|| panic!("not a number: {other}")),
    }
}

fn input_tensor(t: &Value) -> Tensor {
    let shape: Vec<usize> =
        t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let data = t["data"].as_array().unwrap();
    match t["datatype"].as_str().unwrap() {
        "FP32" => {
            Tensor::from_shape(&shape, &data.iter().map(|v| number(v) as f32).collect::<Vec<_>>()).unwrap()
        }
        "FP64" => Tensor::from_shape(&shape, &data.iter().map(number).collect::<Vec<_>>()).unwrap(),
        "INT64" => {
            Tensor::from_shape(&shape, &data.iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>()).unwrap()
        }
        other => panic!("unexpected input datatype {other}"),
    }
}

/// Runs one case; returns a description of the first mismatch, if any.
fn check_case(path: &Path) -> Result<usize, String> {
    let case: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let model = onnx_parser()
        .model_for_path(path.with_extension("onnx"))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| format!("does not load: {e:#}"))?;
    let inputs: TVec<TValue> =
        case["inputs"].as_array().unwrap().iter().map(|t| input_tensor(t).into_tvalue()).collect();
    let outputs = model.run(inputs).map_err(|e| format!("does not run: {e:#}"))?;
    let expected = case["outputs"].as_array().unwrap();
    if outputs.len() != expected.len() {
        return Err(format!("{} outputs, expected {}", outputs.len(), expected.len()));
    }
    let mut compared = 0;
    for (got, want) in outputs.iter().zip(expected) {
        let name = want["name"].as_str().unwrap();
        let shape: Vec<usize> =
            want["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        if got.shape() != shape.as_slice() {
            return Err(format!("{name}: shape {:?}, expected {shape:?}", got.shape()));
        }
        let data = want["data"].as_array().unwrap();
        let view = got.try_as_plain_ram().unwrap();
        match want["datatype"].as_str().unwrap() {
            "INT64" => {
                let found = view.as_slice::<i64>().map_err(|e| format!("{name}: {e}"))?;
                for (i, (f, w)) in found.iter().zip(data).enumerate() {
                    if *f != w.as_i64().unwrap() {
                        return Err(format!("{name}[{i}]: {f}, onnxruntime {w}"));
                    }
                }
            }
            "BYTES" => {
                let found = view.as_slice::<String>().map_err(|e| format!("{name}: {e}"))?;
                for (i, (f, w)) in found.iter().zip(data).enumerate() {
                    if f != w.as_str().unwrap() {
                        return Err(format!("{name}[{i}]: {f:?}, onnxruntime {w}"));
                    }
                }
            }
            "FP32" => {
                let found = view.as_slice::<f32>().map_err(|e| format!("{name}: {e}"))?;
                for (i, (f, w)) in found.iter().zip(data).enumerate() {
                    let (f, w) = (f64::from(*f), number(w));
                    let close =
                        (f.is_nan() && w.is_nan()) || f == w || (f - w).abs() <= 1e-6 + 1e-6 * w.abs();
                    if !close {
                        return Err(format!("{name}[{i}]: {f}, onnxruntime {w}"));
                    }
                }
            }
            other => return Err(format!("{name}: unexpected datatype {other}")),
        }
        compared += data.len();
    }
    Ok(compared)
}

#[test]
fn every_tree_case_matches_onnxruntime() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 40, "expected the committed edge cases, found {}", paths.len());
    let mut failures = Vec::new();
    for path in &paths {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        match check_case(path) {
            Ok(n) => assert!(n > 0, "{stem}: nothing compared"),
            Err(e) => failures.push(format!("{stem}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from onnxruntime:\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n")
    );
}

#[test]
fn unsupported_attribute_value_is_refused_at_load_naming_it() {
    // The mixed-mode case with one mode rewritten to one this kernel does not know.
    let path = cases_dir().join("clf4_mixed_none.onnx");
    let mut proto = onnx_parser().proto_model_for_path(&path).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let modes = graph.node[0].attribute.iter_mut().find(|a| a.name == "nodes_modes").unwrap();
    let branch = modes.strings.iter().position(|m| m.as_slice() != b"LEAF").unwrap();
    modes.strings[branch] = b"BRANCH_MEMBER".to_vec();
    let err = onnx_parser().model_for_proto_model(&proto).map(|_| ()).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("TreeEnsembleClassifier attribute `nodes_modes` holds `BRANCH_MEMBER`"),
        "{message}"
    );
}
