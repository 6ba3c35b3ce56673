//! The model runtime: loads an ONNX model with tract, describes its signature, checks inputs
//! against it, and runs it.
//!
//! Loading does all the expensive work once — decode, type, declutter, optimize — and keeps
//! the result as a shared, immutable plan (`Arc`); each run spawns its own small state, so one
//! [`Model`] serves any number of threads at once. An anonymous first dimension of a graph
//! input (what skl2onnx writes for the batch) is named [`BATCH_SYMBOL`] before typing, so one
//! plan serves every batch size.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::{fmt, io};

use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::datatype::DataType;
use crate::tensor::{TensorError, datatype_of};

pub mod batch;

/// Name given to an anonymous first input dimension.
pub const BATCH_SYMBOL: &str = "N";

/// One dimension of a declared tensor shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named free size (e.g. the batch `N`); every use of the same name must agree.
    Symbol(String),
    /// Any size (an expression tract resolves at run time).
    Dynamic,
}

impl Dim {
    /// The dimension as V2 metadata reports it: the size, or -1 when it varies.
    pub fn v2(&self) -> i64 {
        match self {
            Dim::Fixed(n) => i64::try_from(*n).unwrap_or(i64::MAX),
            Dim::Symbol(_) | Dim::Dynamic => -1,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => f.write_str(s),
            Dim::Dynamic => f.write_str("?"),
        }
    }
}

/// A named, typed tensor the model takes or produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    /// The shape written as `[N, 30]`.
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(Dim::to_string).collect();
        format!("[{}]", dims.join(", "))
    }
}

/// What a model takes and produces, in the model's own order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// An input as a request supplies it, before any data is converted.
#[derive(Debug, Clone, Copy)]
pub struct ProvidedInput<'a> {
    pub name: &'a str,
    pub datatype: DataType,
    pub shape: &'a [usize],
}

/// Why supplied inputs do not fit the model's signature.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("model has no input named `{name}` (its inputs: {expected})")]
    UnknownInput { name: String, expected: String },
    #[error("input `{name}` is given more than once")]
    DuplicateInput { name: String },
    #[error("input `{name}` is missing")]
    MissingInput { name: String },
    #[error("input `{name}` has datatype {found} but the model takes {expected}")]
    WrongDatatype { name: String, expected: DataType, found: DataType },
    #[error("input `{name}` has shape {found:?} ({} dimensions) but the model takes {expected} ({} dimensions)", found.len(), expected_rank)]
    WrongRank { name: String, expected: String, expected_rank: usize, found: Vec<usize> },
    #[error("input `{name}` has {found} in dimension {axis} but the model takes {expected}")]
    WrongDim { name: String, axis: usize, expected: usize, found: usize },
    #[error(
        "input `{name}` has {found} in dimension {axis} ({symbol}) but `{first_name}` has {first}: inputs must agree on {symbol}"
    )]
    InconsistentSymbol {
        name: String,
        axis: usize,
        symbol: String,
        found: usize,
        first_name: String,
        first: usize,
    },
    #[error("input `{name}` has size 0 in dimension {axis}: empty tensors are not served")]
    EmptyDimension { name: String, axis: usize },
}

impl Signature {
    /// Checks supplied inputs against the signature before any data is touched. On success,
    /// returns for each model input (in model order) the index of the supplied input feeding it.
    pub fn check_inputs(&self, provided: &[ProvidedInput<'_>]) -> Result<Vec<usize>, InputError> {
        let mut feeding: Vec<Option<usize>> = vec![None; self.inputs.len()];
        let mut symbols: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
        for (i, p) in provided.iter().enumerate() {
            let Some(slot) = self.inputs.iter().position(|s| s.name == p.name) else {
                let expected: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
                return Err(InputError::UnknownInput {
                    name: p.name.to_owned(),
                    expected: expected.join(", "),
                });
            };
            if feeding[slot].replace(i).is_some() {
                return Err(InputError::DuplicateInput { name: p.name.to_owned() });
            }
            let spec = &self.inputs[slot];
            if p.datatype != spec.datatype {
                return Err(InputError::WrongDatatype {
                    name: p.name.to_owned(),
                    expected: spec.datatype,
                    found: p.datatype,
                });
            }
            if p.shape.len() != spec.shape.len() {
                return Err(InputError::WrongRank {
                    name: p.name.to_owned(),
                    expected: spec.shape_string(),
                    expected_rank: spec.shape.len(),
                    found: p.shape.to_vec(),
                });
            }
            for (axis, (dim, &found)) in spec.shape.iter().zip(p.shape).enumerate() {
                if found == 0 {
                    return Err(InputError::EmptyDimension { name: p.name.to_owned(), axis });
                }
                match dim {
                    Dim::Fixed(expected) if *expected != found => {
                        return Err(InputError::WrongDim {
                            name: p.name.to_owned(),
                            axis,
                            expected: *expected,
                            found,
                        });
                    }
                    Dim::Symbol(symbol) => match symbols.get(symbol.as_str()) {
                        Some(&(first, first_name)) if first != found => {
                            return Err(InputError::InconsistentSymbol {
                                name: p.name.to_owned(),
                                axis,
                                symbol: symbol.clone(),
                                found,
                                first_name: first_name.to_owned(),
                                first,
                            });
                        }
                        Some(_) => {}
                        None => {
                            symbols.insert(symbol, (found, p.name));
                        }
                    },
                    Dim::Fixed(_) | Dim::Dynamic => {}
                }
            }
        }
        feeding
            .into_iter()
            .zip(&self.inputs)
            .map(|(f, spec)| f.ok_or_else(|| InputError::MissingInput { name: spec.name.clone() }))
            .collect()
    }

    /// Index of the output with this name.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|s| s.name == name)
    }
}

/// Why a model cannot be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot read model file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("not a valid ONNX model: {0}")]
    Decode(String),
    #[error("ONNX graph cannot be translated: {0}")]
    Translate(String),
    #[error("model cannot be typed (every input dimension but the first must have a size): {0}")]
    Typing(String),
    #[error("model {kind} `{name}` has element type {datatype}, which the agent does not serve")]
    UnsupportedDatatype { kind: &'static str, name: String, datatype: String },
    #[error("model cannot be optimized: {0}")]
    Optimize(String),
    #[error("model expects {expected} inputs, got {found}")]
    InputCount { expected: usize, found: usize },
    #[error("model run failed: {0}")]
    Run(String),
    #[error("model output `{name}` does not match its declared signature: {problem}")]
    OutputMismatch { name: String, problem: String },
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// A loaded, optimized model, ready to run from any thread.
#[derive(Clone)]
pub struct Model {
    plan: Arc<TypedRunnableModel>,
    signature: Signature,
    metadata: BTreeMap<String, String>,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model").field("signature", &self.signature).finish_non_exhaustive()
    }
}

impl Model {
    /// Reads and loads an ONNX file. External tensor data is resolved next to the file.
    pub fn load_file(path: &Path) -> Result<Model, RuntimeError> {
        let bytes =
            std::fs::read(path).map_err(|source| RuntimeError::Read { path: path.to_owned(), source })?;
        Model::load_bytes(&bytes, path.parent())
    }

    /// Loads an ONNX model from its bytes: decode, name the batch dimension, type, optimize.
    pub fn load_bytes(bytes: &[u8], model_dir: Option<&Path>) -> Result<Model, RuntimeError> {
        let onnx = onnx_parser();
        let mut proto =
            onnx.proto_model_for_read(&mut &bytes[..]).map_err(|e| RuntimeError::Decode(format!("{e:#}")))?;
        if proto.graph.is_none() {
            return Err(RuntimeError::Decode("the file holds no graph".into()));
        }
        check_graph_outputs(proto.graph.as_ref(), &HashSet::new())?;
        name_anonymous_batch_dims(&mut proto);
        let metadata = proto.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect();
        let dir = model_dir.and_then(Path::to_str);
        let parsed = onnx.parse(&proto, dir).map_err(|e| RuntimeError::Translate(format!("{e:#}")))?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(RuntimeError::Translate(format!(
                "inputs without a producer: {}",
                parsed.unresolved_inputs.join(", ")
            )));
        }
        let typed = parsed
            .model
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .map_err(|e| RuntimeError::Typing(format!("{e:#}")))?;
        let signature = signature_of(&typed)?;
        let plan = typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| RuntimeError::Optimize(format!("{e:#}")))?;
        Ok(Model { plan, signature, metadata })
    }

    /// The model's inputs and outputs.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The ONNX file's `metadata_props` (e.g. `outpost.version`).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Runs the model. `inputs` are in the signature's order and already checked against it
    /// (see [`Signature::check_inputs`]); outputs come back in the signature's order.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        if inputs.len() != self.signature.inputs.len() {
            return Err(RuntimeError::InputCount {
                expected: self.signature.inputs.len(),
                found: inputs.len(),
            });
        }
        let values: TVec<TValue> = inputs.into_iter().map(Tensor::into_tvalue).collect();
        let outputs = self.plan.run(values).map_err(|e| RuntimeError::Run(format!("{e:#}")))?;
        outputs
            .into_iter()
            .map(|value| {
                let tensor = value.into_tensor();
                if tensor.datum_type() == DatumType::TDim {
                    tensor
                        .cast_to_dt(DatumType::I64)
                        .map(|t| t.into_owned())
                        .map_err(|e| RuntimeError::Run(format!("cannot convert output to INT64: {e:#}")))
                } else {
                    Ok(tensor)
                }
            })
            .collect()
    }

    /// An all-zero input with every free dimension set to `batch`: what start-up runs when no
    /// reference outputs come with the model.
    pub fn sample_inputs(&self, batch: usize) -> Result<Vec<Tensor>, RuntimeError> {
        self.signature
            .inputs
            .iter()
            .map(|spec| {
                let shape: Vec<usize> =
                    spec.shape.iter().map(|d| if let Dim::Fixed(n) = d { *n } else { batch }).collect();
                Tensor::zero_dt(spec.datatype.datum_type(), &shape)
                    .map_err(|e| RuntimeError::Run(format!("cannot build sample input: {e:#}")))
            })
            .collect()
    }

    /// Checks that outputs have the declared datatypes and ranks (and fixed sizes).
    pub fn check_outputs(&self, outputs: &[Tensor]) -> Result<(), RuntimeError> {
        if outputs.len() != self.signature.outputs.len() {
            return Err(RuntimeError::OutputMismatch {
                name: "*".into(),
                problem: format!(
                    "{} outputs produced, {} declared",
                    outputs.len(),
                    self.signature.outputs.len()
                ),
            });
        }
        for (tensor, spec) in outputs.iter().zip(&self.signature.outputs) {
            let mismatch =
                |problem: String| RuntimeError::OutputMismatch { name: spec.name.clone(), problem };
            let dt = datatype_of(tensor)?;
            if dt != spec.datatype {
                return Err(mismatch(format!("datatype {dt}, declared {}", spec.datatype)));
            }
            let fits = tensor.rank() == spec.shape.len()
                && spec.shape.iter().zip(tensor.shape()).all(|(d, &n)| match d {
                    Dim::Fixed(m) => *m == n,
                    Dim::Symbol(_) | Dim::Dynamic => true,
                });
            if !fits {
                return Err(mismatch(format!(
                    "shape {:?}, declared {}",
                    tensor.shape(),
                    spec.shape_string()
                )));
            }
        }
        Ok(())
    }
}

/// tract's ONNX parser with our own ops registered: tree ensembles run on [`crate::trees`]
/// (tract's own is slow and gets binary labels wrong).
pub fn onnx_parser() -> tract_onnx::Onnx {
    let mut onnx = onnx();
    crate::trees::register(&mut onnx.op_register);
    onnx
}

/// Refuses a graph (or subgraph) whose outputs name a value nothing produces: tract 0.23's
/// parser indexes its name map with them and panics (found by the `model_load` fuzz target).
/// A subgraph may also name values of the graphs around it (`outer`).
fn check_graph_outputs(graph: Option<&pb::GraphProto>, outer: &HashSet<&str>) -> Result<(), RuntimeError> {
    let Some(graph) = graph else {
        return Ok(());
    };
    let mut known: HashSet<&str> = outer.clone();
    known.extend(graph.input.iter().map(|i| i.name.as_str()));
    known.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    known.extend(
        graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)).filter(|n| !n.is_empty()),
    );
    if let Some(missing) = graph.output.iter().find(|o| !known.contains(o.name.as_str())) {
        return Err(RuntimeError::Decode(format!(
            "graph `{}` lists output `{}`, which no node, input or initializer produces",
            graph.name, missing.name
        )));
    }
    for attr in graph.node.iter().flat_map(|n| &n.attribute) {
        for sub in attr.g.iter().chain(&attr.graphs) {
            check_graph_outputs(Some(sub), &known)?;
        }
    }
    Ok(())
}

/// Gives the first dimension of each graph input a name when the file leaves it anonymous.
fn name_anonymous_batch_dims(proto: &mut pb::ModelProto) {
    use pb::tensor_shape_proto::dimension::Value as DimValue;
    let Some(graph) = proto.graph.as_mut() else {
        return;
    };
    let initializers: HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    for input in graph.input.iter_mut().filter(|i| !initializers.contains(&i.name)) {
        let Some(pb::type_proto::Value::TensorType(tensor)) =
            input.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            continue;
        };
        let Some(first) = tensor.shape.as_mut().and_then(|s| s.dim.first_mut()) else {
            continue;
        };
        let anonymous = match &first.value {
            None => true,
            Some(DimValue::DimParam(name)) => name.is_empty(),
            Some(DimValue::DimValue(_)) => false,
        };
        if anonymous {
            first.value = Some(DimValue::DimParam(BATCH_SYMBOL.to_owned()));
        }
    }
}

fn spec_of(
    model: &TypedModel,
    outlet: OutletId,
    name: String,
    kind: &'static str,
) -> Result<TensorSpec, RuntimeError> {
    let fact = model.outlet_fact(outlet).map_err(|e| RuntimeError::Typing(format!("{e:#}")))?;
    // tract computes some integer outputs (e.g. class labels picked by ArrayFeatureExtractor)
    // as symbolic dimensions; ONNX declares them int64, and `run` converts them back.
    let datum_type = if fact.datum_type == DatumType::TDim { DatumType::I64 } else { fact.datum_type };
    let datatype =
        DataType::from_datum_type(datum_type).ok_or_else(|| RuntimeError::UnsupportedDatatype {
            kind,
            name: name.clone(),
            datatype: format!("{:?}", fact.datum_type),
        })?;
    let shape = fact
        .shape
        .iter()
        .map(|d| match d.to_i64() {
            Ok(n) => usize::try_from(n).map(Dim::Fixed).unwrap_or(Dim::Dynamic),
            Err(_) => match d {
                TDim::Sym(s) => Dim::Symbol(s.to_string()),
                _ => Dim::Dynamic,
            },
        })
        .collect();
    Ok(TensorSpec { name, datatype, shape })
}

fn signature_of(model: &TypedModel) -> Result<Signature, RuntimeError> {
    let inputs = model
        .input_outlets()
        .map_err(|e| RuntimeError::Typing(format!("{e:#}")))?
        .iter()
        .map(|&o| spec_of(model, o, model.node(o.node).name.clone(), "input"))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = model
        .output_outlets()
        .map_err(|e| RuntimeError::Typing(format!("{e:#}")))?
        .iter()
        .map(|&o| {
            let name =
                model.outlet_label(o).map(str::to_owned).unwrap_or_else(|| model.node(o.node).name.clone());
            spec_of(model, o, name, "output")
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Signature { inputs, outputs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dt: DataType, shape: Vec<Dim>) -> TensorSpec {
        TensorSpec { name: name.into(), datatype: dt, shape }
    }

    fn two_inputs() -> Signature {
        Signature {
            inputs: vec![
                spec("a", DataType::F32, vec![Dim::Symbol("N".into()), Dim::Fixed(3)]),
                spec("b", DataType::I64, vec![Dim::Symbol("N".into())]),
            ],
            outputs: vec![spec("y", DataType::F32, vec![Dim::Symbol("N".into())])],
        }
    }

    fn p<'a>(name: &'a str, datatype: DataType, shape: &'a [usize]) -> ProvidedInput<'a> {
        ProvidedInput { name, datatype, shape }
    }

    #[test]
    fn inputs_in_any_order_map_to_model_order() {
        let sig = two_inputs();
        let order = sig.check_inputs(&[p("b", DataType::I64, &[2]), p("a", DataType::F32, &[2, 3])]).unwrap();
        assert_eq!(order, vec![1, 0]);
    }

    #[test]
    fn every_signature_violation_is_named() {
        let sig = two_inputs();
        let cases: Vec<(Vec<ProvidedInput<'_>>, &str)> = vec![
            (vec![p("c", DataType::F32, &[1, 3])], "model has no input named `c` (its inputs: a, b)"),
            (
                vec![p("a", DataType::F32, &[1, 3]), p("a", DataType::F32, &[1, 3])],
                "input `a` is given more than once",
            ),
            (vec![p("a", DataType::F32, &[1, 3])], "input `b` is missing"),
            (vec![p("a", DataType::F64, &[1, 3])], "input `a` has datatype FP64 but the model takes FP32"),
            (
                vec![p("a", DataType::F32, &[3])],
                "input `a` has shape [3] (1 dimensions) but the model takes [N, 3] (2 dimensions)",
            ),
            (vec![p("a", DataType::F32, &[1, 4])], "input `a` has 4 in dimension 1 but the model takes 3"),
            (
                vec![p("a", DataType::F32, &[2, 3]), p("b", DataType::I64, &[5])],
                "input `b` has 5 in dimension 0 (N) but `a` has 2: inputs must agree on N",
            ),
            (
                vec![p("a", DataType::F32, &[0, 3])],
                "input `a` has size 0 in dimension 0: empty tensors are not served",
            ),
        ];
        for (provided, message) in cases {
            assert_eq!(sig.check_inputs(&provided).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn output_nothing_produces_is_refused_not_panicked_on() {
        // The shape of a fuzz finding: tract's parser panicked on an output with no producer.
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models");
        let bytes = std::fs::read(dir.join("breast_cancer_rf-1.0.0.onnx")).unwrap();
        let mut proto = onnx().proto_model_for_read(&mut &bytes[..]).unwrap();
        proto.graph.as_mut().unwrap().output[0].name = "nobody_makes_this".into();
        let mut edited = Vec::new();
        prost::Message::encode(&proto, &mut edited).unwrap();
        let err = Model::load_bytes(&edited, None).unwrap_err().to_string();
        assert!(
            err.contains("lists output `nobody_makes_this`, which no node, input or initializer produces"),
            "{err}"
        );
    }

    #[test]
    fn garbage_bytes_are_refused_not_panicked_on() {
        for bytes in [&b""[..], b"not an onnx model at all", &[0xff; 64]] {
            assert!(Model::load_bytes(bytes, None).is_err());
        }
    }
}
