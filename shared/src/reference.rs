//! Reference input/output pairs produced by another runtime (e.g. onnxruntime at training
//! time), and the check that our runtime reproduces them before a model may serve.
//!
//! Runtimes disagree on some models (tract's tree ensembles, for one), so a model that comes
//! with references is only trusted once tract's outputs match them: integers and booleans
//! exactly, floats within `abs + rel * |expected|`.
//!
//! File format (`<model>.reference.json`, format version 1):
//! `{"format_version": 1, "model": "…", "version": "…", "producer": "onnxruntime 1.31.1",
//!   "tolerance": {"abs": 1e-5, "rel": 1e-5}, "inputs": [V2 tensor…], "outputs": [V2 tensor…]}`
//! where a V2 tensor is `{"name", "datatype", "shape", "data"}` as in the inference protocol.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tract_onnx::prelude::Tensor;

use crate::datatype::DataType;
use crate::runtime::{InputError, Model, ProvidedInput, RuntimeError};
use crate::tensor::{TensorError, datatype_of, slice, tensor_from_json};

/// The reference format this build reads.
pub const FORMAT_VERSION: u32 = 1;

/// How close a float output must be: `|found - expected| <= abs + rel * |expected|`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    pub abs: f64,
    pub rel: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance { abs: 1e-5, rel: 1e-5 }
    }
}

impl Tolerance {
    /// Whether `found` is close enough to `expected`.
    pub fn accepts(&self, expected: f64, found: f64) -> bool {
        if expected.is_nan() || found.is_nan() {
            return expected.is_nan() && found.is_nan();
        }
        if expected.is_infinite() || found.is_infinite() {
            return expected == found;
        }
        (found - expected).abs() <= self.abs + self.rel * expected.abs()
    }
}

/// One tensor of a reference file, as V2 JSON writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<usize>,
    pub data: serde_json::Value,
}

/// A reference file: inputs, and the outputs another runtime produced for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    pub format_version: u32,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub producer: Option<String>,
    #[serde(default)]
    pub tolerance: Tolerance,
    pub inputs: Vec<ReferenceTensor>,
    pub outputs: Vec<ReferenceTensor>,
}

/// Why a reference file cannot be used, or why the model does not reproduce it.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("cannot read reference file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("reference file is not valid: {0}")]
    Parse(String),
    #[error("reference format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedFormat(u32),
    #[error("reference tensor `{name}` has unknown datatype `{datatype}`")]
    UnknownDatatype { name: String, datatype: String },
    #[error("reference tensor `{name}`: {source}")]
    BadTensor { name: String, source: TensorError },
    #[error("reference inputs do not fit the model: {0}")]
    Input(#[from] InputError),
    #[error("model failed on the reference inputs: {0}")]
    Run(#[from] RuntimeError),
    #[error("model has no output `{name}`, which the reference expects")]
    MissingOutput { name: String },
    #[error("output `{name}` has datatype {found}, the reference has {expected}")]
    OutputDatatype { name: String, expected: DataType, found: DataType },
    #[error("output `{name}` has shape {found:?}, the reference has {expected:?}")]
    OutputShape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error(
        "output `{name}` element {index} is {found}, the reference has {expected} (tolerance abs {abs}, rel {rel})"
    )]
    Mismatch { name: String, index: usize, expected: f64, found: f64, abs: f64, rel: f64 },
}

/// What a successful check compared.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceReport {
    /// Elements compared per output, with the largest absolute difference seen.
    pub outputs: Vec<(String, usize, f64)>,
}

impl Reference {
    /// Parses a reference file's JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Reference, ReferenceError> {
        let reference: Reference =
            serde_json::from_slice(bytes).map_err(|e| ReferenceError::Parse(e.to_string()))?;
        if reference.format_version != FORMAT_VERSION {
            return Err(ReferenceError::UnsupportedFormat(reference.format_version));
        }
        Ok(reference)
    }

    /// Reads a reference file.
    pub fn load(path: &Path) -> Result<Reference, ReferenceError> {
        let bytes =
            std::fs::read(path).map_err(|source| ReferenceError::Read { path: path.to_owned(), source })?;
        Reference::from_json(&bytes)
    }

    /// Where a model's reference file sits by convention: `x.onnx` → `x.reference.json`.
    pub fn path_beside(model_path: &Path) -> PathBuf {
        model_path.with_extension("reference.json")
    }

    /// Runs `model` on the reference inputs and compares every output element.
    pub fn verify(&self, model: &Model) -> Result<ReferenceReport, ReferenceError> {
        let inputs = self.inputs.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        let provided: Vec<ProvidedInput<'_>> = self
            .inputs
            .iter()
            .zip(&inputs)
            .map(|(r, (dt, _))| ProvidedInput { name: &r.name, datatype: *dt, shape: &r.shape })
            .collect();
        let order = model.signature().check_inputs(&provided)?;
        let mut by_position: Vec<Option<Tensor>> = inputs.into_iter().map(|(_, t)| Some(t)).collect();
        let ordered = order
            .iter()
            .map(|&i| by_position[i].take())
            .collect::<Option<Vec<Tensor>>>()
            .ok_or_else(|| ReferenceError::Parse("reference inputs map twice".into()))?;
        let outputs = model.run(ordered)?;
        model.check_outputs(&outputs)?;

        let mut report = ReferenceReport { outputs: Vec::new() };
        for expected in &self.outputs {
            let index = model
                .signature()
                .output_index(&expected.name)
                .ok_or_else(|| ReferenceError::MissingOutput { name: expected.name.clone() })?;
            let (dt, want) = decode(expected)?;
            let got = &outputs[index];
            let got_dt = datatype_of(got)
                .map_err(|source| ReferenceError::BadTensor { name: expected.name.clone(), source })?;
            if got_dt != dt {
                return Err(ReferenceError::OutputDatatype {
                    name: expected.name.clone(),
                    expected: dt,
                    found: got_dt,
                });
            }
            if got.shape() != want.shape() {
                return Err(ReferenceError::OutputShape {
                    name: expected.name.clone(),
                    expected: want.shape().to_vec(),
                    found: got.shape().to_vec(),
                });
            }
            let bad = |source| ReferenceError::BadTensor { name: expected.name.clone(), source };
            let want_values = as_f64(&want).map_err(bad)?;
            let got_values = as_f64(got).map_err(bad)?;
            let exact = !dt.is_float();
            let mut max_diff = 0f64;
            for (index, (&w, &g)) in want_values.iter().zip(&got_values).enumerate() {
                let ok = if exact { w == g } else { self.tolerance.accepts(w, g) };
                if !ok {
                    return Err(ReferenceError::Mismatch {
                        name: expected.name.clone(),
                        index,
                        expected: w,
                        found: g,
                        abs: if exact { 0.0 } else { self.tolerance.abs },
                        rel: if exact { 0.0 } else { self.tolerance.rel },
                    });
                }
                if w.is_finite() && g.is_finite() {
                    max_diff = max_diff.max((w - g).abs());
                }
            }
            report.outputs.push((expected.name.clone(), want_values.len(), max_diff));
        }
        Ok(report)
    }
}

fn decode(r: &ReferenceTensor) -> Result<(DataType, Tensor), ReferenceError> {
    let dt = DataType::from_v2_name(&r.datatype).ok_or_else(|| ReferenceError::UnknownDatatype {
        name: r.name.clone(),
        datatype: r.datatype.clone(),
    })?;
    let tensor = tensor_from_json(dt, &r.shape, &r.data)
        .map_err(|source| ReferenceError::BadTensor { name: r.name.clone(), source })?;
    Ok((dt, tensor))
}

/// A tensor's elements widened to f64 for comparison (exact for every integer a model emits
/// below 2^53, which covers class labels and counts).
pub fn as_f64(t: &Tensor) -> Result<Vec<f64>, TensorError> {
    macro_rules! widen {
        ($t:ty) => {
            slice::<$t>(t)?.iter().map(|&x| x as f64).collect()
        };
    }
    Ok(match datatype_of(t)? {
        DataType::Bool => slice::<bool>(t)?.iter().map(|&b| f64::from(u8::from(b))).collect(),
        DataType::U8 => widen!(u8),
        DataType::U16 => widen!(u16),
        DataType::U32 => widen!(u32),
        DataType::U64 => widen!(u64),
        DataType::I8 => widen!(i8),
        DataType::I16 => widen!(i16),
        DataType::I32 => widen!(i32),
        DataType::I64 => widen!(i64),
        DataType::F32 => widen!(f32),
        DataType::F64 => widen!(f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_is_absolute_plus_relative() {
        let t = Tolerance { abs: 1e-5, rel: 1e-5 };
        assert!(t.accepts(0.5, 0.500_009));
        assert!(!t.accepts(0.5, 0.500_02));
        assert!(t.accepts(1000.0, 1000.01));
        assert!(t.accepts(f64::NAN, f64::NAN));
        assert!(!t.accepts(1.0, f64::NAN));
    }

    #[test]
    fn rejects_unknown_format_and_fields() {
        let err = Reference::from_json(br#"{"format_version":2,"inputs":[],"outputs":[]}"#).unwrap_err();
        assert!(matches!(err, ReferenceError::UnsupportedFormat(2)));
        let err =
            Reference::from_json(br#"{"format_version":1,"inputs":[],"outputs":[],"x":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `x`"), "{err}");
    }
}
