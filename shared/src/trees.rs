//! Our own `TreeEnsembleClassifier` and `TreeEnsembleRegressor` (ai.onnx.ml), registered in
//! tract's ONNX op registry so tree models load through the normal path while every other op
//! stays tract's.
//!
//! tract 0.23's own tree ensemble gives binary classifiers wrong labels, refuses the
//! `base_values` skl2onnx writes for gradient boosting, has no regressor, and walks the leaf
//! list from the start on every lookup (see `../shared/NOTES-runtime.md`). Ours reproduces
//! onnxruntime's results (its semantics are written down in [`ensemble`]), and refuses at
//! load time — naming the attribute and value — anything it does not support.
//!
//! - [`attrs`]: the node's attributes, checked for names and types, as a [`attrs::Spec`].
//! - [`ensemble`]: the checked, flattened forest and its evaluation (the kernel).
//! - [`op`]: the tract glue: an inference-time expansion and the typed, runnable op.

pub mod attrs;
pub mod ensemble;
pub mod op;

pub use attrs::{Aggregate, Labels, Mode, Operator, PostTransform, Spec, SpecKind, Values};
pub use ensemble::{Ensemble, Float};

/// Why a tree ensemble cannot be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{op} attribute `{name}` {problem}")]
    Attribute { op: &'static str, name: String, problem: String },
    #[error("{op}: {problem}")]
    Structure { op: &'static str, problem: String },
    #[error("{op} input {problem}")]
    Input { op: &'static str, problem: String },
}

/// Replaces tract's tree-ensemble builders with ours (and adds the regressor tract lacks).
pub fn register(registry: &mut tract_onnx::model::OnnxOpRegister) {
    registry.insert("TreeEnsembleClassifier", op::classifier);
    registry.insert("TreeEnsembleRegressor", op::regressor);
}
