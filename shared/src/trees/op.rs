//! The tract glue: ONNX builders for both operators, an inference-time expansion that types
//! the outputs, and [`TreeEnsembleOp`], the typed op that runs an [`Ensemble`].
//!
//! The forest is built at parse time in f64 to report structural errors while the model loads
//! (with the node named), and built again when the graph is typed, in the input's own type:
//! f32 for FP32 (and INT64 / INT32, cast to FP32 first, as onnxruntime compares integers with
//! float thresholds), f64 for FP64.

use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::cast::cast;

use super::attrs::{self, Labels, Operator, Spec, SpecKind};
use super::ensemble::Ensemble;

type Built = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// Builder for `TreeEnsembleClassifier`.
pub fn classifier(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    build(node, Operator::Classifier)
}

/// Builder for `TreeEnsembleRegressor`.
pub fn regressor(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    build(node, Operator::Regressor)
}

fn build(node: &NodeProto, operator: Operator) -> Built {
    let spec = attrs::parse(node, operator)?;
    Ensemble::<f64>::build(&spec)?;
    Ok((expand(TreeEnsembleNode { spec: Arc::new(spec) }), vec![]))
}

/// The parsed node until the graph is typed.
#[derive(Debug, Clone)]
struct TreeEnsembleNode {
    spec: Arc<Spec>,
}

impl TreeEnsembleNode {
    fn n_outputs(&self) -> usize {
        match &self.spec.kind {
            SpecKind::Classifier { labels } => labels.len(),
            SpecKind::Regressor { n_targets, .. } => *n_targets,
        }
    }
}

fn label_type(labels: &Labels) -> DatumType {
    match labels {
        Labels::Int(_) => DatumType::I64,
        Labels::Str(_) => DatumType::String,
    }
}

impl Expansion for TreeEnsembleNode {
    fn name(&self) -> StaticName {
        self.spec.operator.op_type().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(match self.spec.operator {
            Operator::Classifier => 2,
            Operator::Regressor => 1,
        })
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, self.nboutputs()?)?;
        s.equals(&inputs[0].rank, 2)?;
        let scores = match &self.spec.kind {
            SpecKind::Classifier { labels } => {
                s.equals(&outputs[0].datum_type, label_type(labels))?;
                s.equals(&outputs[0].rank, 1)?;
                s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
                &outputs[1]
            }
            SpecKind::Regressor { .. } => &outputs[0],
        };
        s.equals(&scores.datum_type, DatumType::F32)?;
        s.equals(&scores.rank, 2)?;
        s.equals(&scores.shape[0], &inputs[0].shape[0])?;
        s.equals(&scores.shape[1], self.n_outputs().to_dim())?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let op = self.spec.operator.op_type();
        let fact = model.outlet_fact(inputs[0])?.clone();
        if fact.rank() != 2 {
            bail!("{op} input must be [rows, features], not {:?}", fact.shape);
        }
        let (input, kernel) = match fact.datum_type {
            DatumType::F32 => (inputs[0], Kernel::F32(Arc::new(Ensemble::build(&self.spec)?))),
            DatumType::F64 => (inputs[0], Kernel::F64(Arc::new(Ensemble::build(&self.spec)?))),
            DatumType::I64 | DatumType::I32 => {
                let cast =
                    model.wire_node(format!("{prefix}.to_f32"), cast(DatumType::F32), &[inputs[0]])?[0];
                (cast, Kernel::F32(Arc::new(Ensemble::build(&self.spec)?)))
            }
            other => bail!("{op} takes FP32, FP64, INT64 or INT32 input, not {other:?}"),
        };
        if let Ok(width) = fact.shape[1].to_usize()
            && width < kernel.n_features()
        {
            bail!(
                "{op} reads feature {} but its input has only {width} features per row",
                kernel.n_features() - 1
            );
        }
        let strings = match &self.spec.kind {
            SpecKind::Classifier { labels: Labels::Str(s) } => Some(Arc::new(s.clone())),
            _ => None,
        };
        model.wire_node(
            format!("{prefix}.kernel"),
            TreeEnsembleOp { operator: self.spec.operator, kernel, strings },
            &[input],
        )
    }
}

/// The forest in the input's float type.
#[derive(Debug, Clone)]
enum Kernel {
    F32(Arc<Ensemble<f32>>),
    F64(Arc<Ensemble<f64>>),
}

impl Kernel {
    fn n_features(&self) -> usize {
        match self {
            Kernel::F32(e) => e.n_features(),
            Kernel::F64(e) => e.n_features(),
        }
    }

    fn n_outputs(&self) -> usize {
        match self {
            Kernel::F32(e) => e.n_outputs(),
            Kernel::F64(e) => e.n_outputs(),
        }
    }
}

/// The typed, runnable tree-ensemble op. Outputs: `[label [N], scores [N, k]]` for a
/// classifier, `[scores [N, k]]` for a regressor.
#[derive(Debug, Clone)]
pub struct TreeEnsembleOp {
    operator: Operator,
    kernel: Kernel,
    /// String class labels, when the classifier has them (the kernel yields their indices).
    strings: Option<Arc<Vec<String>>>,
}

impl PartialEq for TreeEnsembleOp {
    fn eq(&self, other: &Self) -> bool {
        let same_kernel = match (&self.kernel, &other.kernel) {
            (Kernel::F32(a), Kernel::F32(b)) => Arc::ptr_eq(a, b) || a == b,
            (Kernel::F64(a), Kernel::F64(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        };
        self.operator == other.operator && same_kernel && self.strings == other.strings
    }
}

// Thresholds are floats, but an op only ever equals a clone of itself or an identical
// forest: equality is reflexive for every op tract compares.
impl Eq for TreeEnsembleOp {}

impl Op for TreeEnsembleOp {
    fn name(&self) -> StaticName {
        format!("Outpost{}", self.operator.op_type()).into()
    }

    fn as_typed(&self) -> Option<&dyn TypedOp> {
        Some(self)
    }
}

impl EvalOp for TreeEnsembleOp {
    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let op = self.operator.op_type();
        let [input] = inputs.as_slice() else {
            bail!("{op} takes one input, got {}", inputs.len());
        };
        let &[rows, width] = input.shape() else {
            bail!("{op} input must be [rows, features], not {:?}", input.shape());
        };
        let k = self.kernel.n_outputs();
        let classifier = self.operator == Operator::Classifier;
        let mut scores = Tensor::zero::<f32>(&[rows, k])?;
        let mut labels = vec![0i64; if classifier { rows } else { 0 }];
        {
            let mut view = scores.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            let data = input.try_as_plain_ram()?;
            match &self.kernel {
                Kernel::F32(e) => e.run(data.as_slice::<f32>()?, rows, width, out, &mut labels)?,
                Kernel::F64(e) => e.run(data.as_slice::<f64>()?, rows, width, out, &mut labels)?,
            }
        }
        if !classifier {
            return Ok(tvec!(scores.into_tvalue()));
        }
        let label = match &self.strings {
            None => Tensor::from_shape(&[rows], &labels)?,
            Some(strings) => {
                let named: Vec<String> = labels
                    .iter()
                    .map(|&code| {
                        usize::try_from(code).ok().and_then(|i| strings.get(i)).cloned().unwrap_or_default()
                    })
                    .collect();
                tract_ndarray::Array1::from(named).into_dyn().into_tensor()
            }
        };
        Ok(tvec!(label.into_tvalue(), scores.into_tvalue()))
    }
}

impl TypedOp for TreeEnsembleOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let op = self.operator.op_type();
        let [input] = inputs else {
            bail!("{op} takes one input, got {}", inputs.len());
        };
        if input.rank() != 2 {
            bail!("{op} input must be [rows, features], not {:?}", input.shape);
        }
        let rows = input.shape[0].clone();
        let scores = f32::fact([rows.clone(), self.kernel.n_outputs().to_dim()]);
        Ok(match self.operator {
            Operator::Classifier => {
                let dt = if self.strings.is_some() { DatumType::String } else { DatumType::I64 };
                tvec!(TypedFact::dt_shape(dt, [rows]), scores)
            }
            Operator::Regressor => tvec!(scores),
        })
    }

    fn as_op(&self) -> &dyn Op {
        self
    }

    fn as_op_mut(&mut self) -> &mut dyn Op {
        self
    }
}
