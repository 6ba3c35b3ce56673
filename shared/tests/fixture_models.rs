//! Every committed example model loads in our runtime and reproduces onnxruntime's outputs on
//! every held-out row.

use std::path::PathBuf;

use outpost_shared::reference::Reference;
use outpost_shared::{DataType, Dim, Model};

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

const MODELS: [&str; 11] = [
    "breast_cancer-1.0.0",
    "breast_cancer-1.1.0",
    "breast_cancer-2.0.0-bad",
    "digits_mlp-1.0.0",
    "digits_cnn-1.0.0",
    // Tree ensembles, on our own kernel (see tree_cases.rs for the edge cases).
    "breast_cancer_rf-1.0.0",
    "breast_cancer_gbm-1.0.0",
    "breast_cancer_xgb-1.0.0",
    "breast_cancer_lgbm-1.0.0",
    "digits_rf-1.0.0",
    "diabetes_rf-1.0.0",
];

#[test]
fn every_fixture_model_reproduces_onnxruntime_reference_outputs() {
    for stem in MODELS {
        let path = models_dir().join(format!("{stem}.onnx"));
        let model = Model::load_file(&path).unwrap_or_else(|e| panic!("{stem}: {e}"));
        let reference = Reference::load(&Reference::path_beside(&path)).unwrap();
        let report = reference.verify(&model).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert!(!report.outputs.is_empty());
        for (name, count, max_diff) in &report.outputs {
            assert!(*count > 0 && *max_diff <= 1e-5, "{stem} {name}: {count} elements, max diff {max_diff}");
        }
    }
}

#[test]
fn signature_reports_named_batch_dimension_and_real_types() {
    let model = Model::load_file(&models_dir().join("breast_cancer-1.0.0.onnx")).unwrap();
    let sig = model.signature();
    assert_eq!(sig.inputs.len(), 1);
    assert_eq!(sig.inputs[0].name, "input");
    assert_eq!(sig.inputs[0].datatype, DataType::F32);
    assert_eq!(sig.inputs[0].shape, vec![Dim::Symbol("N".into()), Dim::Fixed(30)]);
    let outputs: Vec<(&str, DataType)> = sig.outputs.iter().map(|o| (o.name.as_str(), o.datatype)).collect();
    assert_eq!(outputs, vec![("label", DataType::I64), ("probabilities", DataType::F32)]);
    assert_eq!(model.metadata().get("outpost.version").map(String::as_str), Some("1.0.0"));
}

#[test]
fn one_plan_serves_every_batch_size() {
    let model = Model::load_file(&models_dir().join("digits_cnn-1.0.0.onnx")).unwrap();
    for batch in [1, 7, 64] {
        let outputs = model.run(model.sample_inputs(batch).unwrap()).unwrap();
        model.check_outputs(&outputs).unwrap();
        assert_eq!(outputs[0].shape(), &[batch, 10]);
    }
}

#[test]
fn tampered_reference_outputs_fail_verification_naming_the_element() {
    let path = models_dir().join("breast_cancer-1.0.0.onnx");
    let model = Model::load_file(&path).unwrap();
    let mut reference = Reference::load(&Reference::path_beside(&path)).unwrap();
    let probs = reference.outputs.iter_mut().find(|o| o.name == "probabilities").unwrap();
    probs.data[3] = serde_json::json!(probs.data[3].as_f64().unwrap() + 0.01);
    let err = reference.verify(&model).unwrap_err().to_string();
    assert!(err.starts_with("output `probabilities` element 3 is"), "{err}");
}
