//! Reading a `TreeEnsembleClassifier` / `TreeEnsembleRegressor` node's attributes
//! (ai.onnx.ml opset 1 and 3, including the `*_as_tensor` forms) into a [`Spec`], checking
//! names and types on the way: an attribute we do not know, or one of the wrong type, is an
//! error that names it, never something silently ignored.

use std::collections::BTreeMap;

use tract_onnx::pb::{AttributeProto, NodeProto, TensorProto};

use super::TreeError;

/// Which of the two operators a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Classifier,
    Regressor,
}

impl Operator {
    /// The ONNX op type.
    pub fn op_type(self) -> &'static str {
        match self {
            Operator::Classifier => "TreeEnsembleClassifier",
            Operator::Regressor => "TreeEnsembleRegressor",
        }
    }

    /// Prefix of the leaf attributes (`class_ids`, `target_ids`, …).
    fn leaf_prefix(self) -> &'static str {
        match self {
            Operator::Classifier => "class",
            Operator::Regressor => "target",
        }
    }
}

/// How a branch node compares the feature `x` with its threshold `t`: true goes to the true
/// child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `x <= t`
    Leq,
    /// `x < t`
    Lt,
    /// `x >= t`
    Gte,
    /// `x > t`
    Gt,
    /// `x == t`
    Eq,
    /// `x != t`
    Neq,
}

impl Mode {
    /// Every mode, in the order of their numeric codes.
    pub const ALL: [Mode; 6] = [Mode::Leq, Mode::Lt, Mode::Gte, Mode::Gt, Mode::Eq, Mode::Neq];

    fn parse(s: &str) -> Option<Option<Mode>> {
        Some(match s {
            "BRANCH_LEQ" => Some(Mode::Leq),
            "BRANCH_LT" => Some(Mode::Lt),
            "BRANCH_GTE" => Some(Mode::Gte),
            "BRANCH_GT" => Some(Mode::Gt),
            "BRANCH_EQ" => Some(Mode::Eq),
            "BRANCH_NEQ" => Some(Mode::Neq),
            "LEAF" => None,
            _ => return None,
        })
    }
}

/// What is applied to the aggregated scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostTransform {
    None,
    Softmax,
    Logistic,
    SoftmaxZero,
    Probit,
}

/// How a regressor combines the trees' leaf values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

/// A float attribute as the model stores it: a list of floats, or a tensor of floats or
/// doubles (`*_as_tensor`).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value at `i` as an f64 (exact for both kinds).
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        match self {
            Values::F32(v) => v.get(i).map(|&x| f64::from(x)),
            Values::F64(v) => v.get(i).copied(),
        }
    }
}

/// Class labels of a classifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Labels {
    Int(Vec<i64>),
    Str(Vec<String>),
}

impl Labels {
    pub fn len(&self) -> usize {
        match self {
            Labels::Int(v) => v.len(),
            Labels::Str(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The operator-specific part of a [`Spec`].
#[derive(Debug, Clone, PartialEq)]
pub enum SpecKind {
    Classifier { labels: Labels },
    Regressor { n_targets: usize, aggregate: Aggregate },
}

/// Everything a tree-ensemble node says, checked for names and types but not yet for
/// structure (that is [`super::Ensemble::build`]'s job).
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub operator: Operator,
    pub kind: SpecKind,
    pub post_transform: PostTransform,
    pub base_values: Option<Values>,
    pub nodes: NodeAttrs,
    pub leaves: LeafAttrs,
}

/// The `nodes_*` attributes, one entry per node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeAttrs {
    pub tree_ids: Vec<i64>,
    pub node_ids: Vec<i64>,
    pub feature_ids: Vec<i64>,
    /// `None` for a leaf.
    pub modes: Vec<Option<Mode>>,
    pub values: Values,
    pub true_ids: Vec<i64>,
    pub false_ids: Vec<i64>,
    /// Empty when the attribute is absent.
    pub missing_tracks_true: Vec<i64>,
}

/// The `class_*` / `target_*` attributes, one entry per leaf weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LeafAttrs {
    pub tree_ids: Vec<i64>,
    pub node_ids: Vec<i64>,
    /// Class index (classifier) or target index (regressor).
    pub ids: Vec<i64>,
    pub weights: Values,
}

// AttributeProto.type codes.
const FLOAT: i32 = 1;
const INT: i32 = 2;
const STRING: i32 = 3;
const TENSOR: i32 = 4;
const FLOATS: i32 = 6;
const INTS: i32 = 7;
const STRINGS: i32 = 8;

fn type_name(code: i32) -> &'static str {
    match code {
        FLOAT => "a float",
        INT => "an int",
        STRING => "a string",
        TENSOR => "a tensor",
        5 => "a graph",
        FLOATS => "a list of floats",
        INTS => "a list of ints",
        STRINGS => "a list of strings",
        _ => "of another kind",
    }
}

const NODE_ATTRS: [&str; 12] = [
    "nodes_falsenodeids",
    "nodes_featureids",
    "nodes_hitrates",
    "nodes_hitrates_as_tensor",
    "nodes_missing_value_tracks_true",
    "nodes_modes",
    "nodes_nodeids",
    "nodes_treeids",
    "nodes_truenodeids",
    "nodes_values",
    "nodes_values_as_tensor",
    "post_transform",
];
const CLASSIFIER_ATTRS: [&str; 9] = [
    "base_values",
    "base_values_as_tensor",
    "class_ids",
    "class_nodeids",
    "class_treeids",
    "class_weights",
    "class_weights_as_tensor",
    "classlabels_int64s",
    "classlabels_strings",
];
const REGRESSOR_ATTRS: [&str; 9] = [
    "aggregate_function",
    "base_values",
    "base_values_as_tensor",
    "n_targets",
    "target_ids",
    "target_nodeids",
    "target_treeids",
    "target_weights",
    "target_weights_as_tensor",
];

/// A node's attributes by name, with typed accessors that name the attribute on error.
struct Attrs<'a> {
    op: &'static str,
    by_name: BTreeMap<&'a str, &'a AttributeProto>,
}

impl<'a> Attrs<'a> {
    fn new(node: &'a NodeProto, operator: Operator) -> Result<Attrs<'a>, TreeError> {
        let op = operator.op_type();
        let specific: &[&str] = match operator {
            Operator::Classifier => &CLASSIFIER_ATTRS,
            Operator::Regressor => &REGRESSOR_ATTRS,
        };
        let mut by_name = BTreeMap::new();
        for attr in &node.attribute {
            let name = attr.name.as_str();
            if !NODE_ATTRS.contains(&name) && !specific.contains(&name) {
                return Err(TreeError::Attribute {
                    op,
                    name: name.to_owned(),
                    problem: "is not an attribute of this operator (ai.onnx.ml opset 1 or 3)".into(),
                });
            }
            if by_name.insert(name, attr).is_some() {
                return Err(TreeError::Attribute {
                    op,
                    name: name.to_owned(),
                    problem: "is given twice".into(),
                });
            }
        }
        Ok(Attrs { op, by_name })
    }

    fn err(&self, name: &str, problem: impl Into<String>) -> TreeError {
        TreeError::Attribute { op: self.op, name: name.to_owned(), problem: problem.into() }
    }

    /// The attribute if present, checked to be of `kind` (a type of 0 is accepted: old
    /// writers leave it unset).
    fn get(&self, name: &str, kind: i32) -> Result<Option<&'a AttributeProto>, TreeError> {
        match self.by_name.get(name) {
            None => Ok(None),
            Some(a) if a.r#type == kind || a.r#type == 0 => Ok(Some(a)),
            Some(a) => {
                Err(self.err(name, format!("is {} but must be {}", type_name(a.r#type), type_name(kind))))
            }
        }
    }

    fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, TreeError> {
        Ok(self.get(name, INTS)?.map(|a| a.ints.clone()))
    }

    fn required_ints(&self, name: &str) -> Result<Vec<i64>, TreeError> {
        self.ints(name)?.ok_or_else(|| self.err(name, "is required but missing"))
    }

    fn int(&self, name: &str) -> Result<Option<i64>, TreeError> {
        Ok(self.get(name, INT)?.map(|a| a.i))
    }

    fn string(&self, name: &str) -> Result<Option<String>, TreeError> {
        self.get(name, STRING)?
            .map(|a| String::from_utf8(a.s.clone()).map_err(|_| self.err(name, "is not valid UTF-8")))
            .transpose()
    }

    fn strings(&self, name: &str) -> Result<Option<Vec<String>>, TreeError> {
        self.get(name, STRINGS)?
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| {
                        String::from_utf8(s.clone())
                            .map_err(|_| self.err(name, "holds a string that is not UTF-8"))
                    })
                    .collect()
            })
            .transpose()
    }

    /// A float attribute given either as `name` (list of floats) or `name_as_tensor`.
    fn values(&self, name: &str) -> Result<Option<Values>, TreeError> {
        let list = self.get(name, FLOATS)?.map(|a| Values::F32(a.floats.clone()));
        let tensor_name = format!("{name}_as_tensor");
        let tensor = self
            .get(&tensor_name, TENSOR)?
            .map(|a| {
                let t = a.t.as_ref().ok_or_else(|| self.err(&tensor_name, "holds no tensor"))?;
                tensor_values(t).map_err(|problem| self.err(&tensor_name, problem.to_string()))
            })
            .transpose()?;
        match (list, tensor) {
            (Some(_), Some(_)) => {
                Err(self.err(name, format!("and {tensor_name} are both given: only one may be")))
            }
            (list, tensor) => Ok(list.or(tensor)),
        }
    }
}

/// Why a tensor attribute's numbers cannot be read (completes "attribute `X` …").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TensorValuesError {
    #[error("stores its data outside the model file, which is not supported here")]
    External,
    #[error("has {bytes} raw bytes, not a whole number of {what}s")]
    Ragged { bytes: usize, what: &'static str },
    #[error("has element type {0} (ONNX TensorProto code); only FLOAT (1) and DOUBLE (11) are accepted")]
    ElementType(i32),
    #[error("declares {declared} elements but holds {held}")]
    Count { declared: i64, held: usize },
}

/// The numbers of a FLOAT or DOUBLE TensorProto (inline data only).
fn tensor_values(t: &TensorProto) -> Result<Values, TensorValuesError> {
    const PROTO_FLOAT: i32 = 1;
    const PROTO_DOUBLE: i32 = 11;
    if !t.external_data.is_empty() {
        return Err(TensorValuesError::External);
    }
    let n: i64 = t.dims.iter().product();
    let values = match t.data_type {
        PROTO_FLOAT if !t.raw_data.is_empty() => {
            if !t.raw_data.len().is_multiple_of(4) {
                return Err(TensorValuesError::Ragged { bytes: t.raw_data.len(), what: "float" });
            }
            Values::F32(
                t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            )
        }
        PROTO_FLOAT => Values::F32(t.float_data.clone()),
        PROTO_DOUBLE if !t.raw_data.is_empty() => {
            if !t.raw_data.len().is_multiple_of(8) {
                return Err(TensorValuesError::Ragged { bytes: t.raw_data.len(), what: "double" });
            }
            Values::F64(
                t.raw_data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            )
        }
        PROTO_DOUBLE => Values::F64(t.double_data.clone()),
        other => {
            return Err(TensorValuesError::ElementType(other));
        }
    };
    if i64::try_from(values.len()).ok() != Some(n) && !(t.dims.is_empty() && values.len() == 1) {
        return Err(TensorValuesError::Count { declared: n, held: values.len() });
    }
    Ok(values)
}

/// Reads a tree-ensemble node's attributes.
pub fn parse(node: &NodeProto, operator: Operator) -> Result<Spec, TreeError> {
    let attrs = Attrs::new(node, operator)?;

    let post_transform = match attrs.string("post_transform")?.as_deref() {
        None | Some("NONE") => PostTransform::None,
        Some("SOFTMAX") => PostTransform::Softmax,
        Some("LOGISTIC") => PostTransform::Logistic,
        Some("SOFTMAX_ZERO") => PostTransform::SoftmaxZero,
        Some("PROBIT") => PostTransform::Probit,
        Some(other) => {
            return Err(attrs.err(
                "post_transform",
                format!("is `{other}`; expected NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO or PROBIT"),
            ));
        }
    };

    let kind = match operator {
        Operator::Classifier => {
            let ints = attrs.ints("classlabels_int64s")?;
            let strs = attrs.strings("classlabels_strings")?;
            let labels = match (ints, strs) {
                (Some(i), None) => Labels::Int(i),
                (None, Some(s)) => Labels::Str(s),
                (Some(_), Some(_)) => {
                    return Err(attrs.err(
                        "classlabels_int64s",
                        "and classlabels_strings are both given: only one may be",
                    ));
                }
                (None, None) => {
                    return Err(
                        attrs.err("classlabels_int64s", "(or classlabels_strings) is required but missing")
                    );
                }
            };
            SpecKind::Classifier { labels }
        }
        Operator::Regressor => {
            let n_targets =
                attrs.int("n_targets")?.ok_or_else(|| attrs.err("n_targets", "is required but missing"))?;
            let n_targets =
                usize::try_from(n_targets).ok().filter(|n| (1..=1 << 20).contains(n)).ok_or_else(|| {
                    attrs.err("n_targets", format!("is {n_targets}; it must be between 1 and 1048576"))
                })?;
            let aggregate = match attrs.string("aggregate_function")?.as_deref() {
                None | Some("SUM") => Aggregate::Sum,
                Some("AVERAGE") => Aggregate::Average,
                Some("MIN") => Aggregate::Min,
                Some("MAX") => Aggregate::Max,
                Some(other) => {
                    return Err(attrs.err(
                        "aggregate_function",
                        format!("is `{other}`; expected SUM, AVERAGE, MIN or MAX"),
                    ));
                }
            };
            SpecKind::Regressor { n_targets, aggregate }
        }
    };

    let mode_strings =
        attrs.strings("nodes_modes")?.ok_or_else(|| attrs.err("nodes_modes", "is required but missing"))?;
    let modes = mode_strings
        .iter()
        .map(|s| {
            Mode::parse(s).ok_or_else(|| {
                attrs.err(
                    "nodes_modes",
                    format!(
                        "holds `{s}`; expected BRANCH_LEQ, BRANCH_LT, BRANCH_GTE, BRANCH_GT, BRANCH_EQ, BRANCH_NEQ or LEAF"
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let nodes = NodeAttrs {
        tree_ids: attrs.required_ints("nodes_treeids")?,
        node_ids: attrs.required_ints("nodes_nodeids")?,
        feature_ids: attrs.required_ints("nodes_featureids")?,
        modes,
        values: attrs.values("nodes_values")?.ok_or_else(|| {
            attrs.err("nodes_values", "(or nodes_values_as_tensor) is required but missing")
        })?,
        true_ids: attrs.required_ints("nodes_truenodeids")?,
        false_ids: attrs.required_ints("nodes_falsenodeids")?,
        missing_tracks_true: attrs.ints("nodes_missing_value_tracks_true")?.unwrap_or_default(),
    };
    // Hit rates carry no meaning for inference; they are only type-checked.
    attrs.values("nodes_hitrates")?;

    let prefix = operator.leaf_prefix();
    let weights_name = format!("{prefix}_weights");
    let leaves = LeafAttrs {
        tree_ids: attrs.required_ints(&format!("{prefix}_treeids"))?,
        node_ids: attrs.required_ints(&format!("{prefix}_nodeids"))?,
        ids: attrs.required_ints(&format!("{prefix}_ids"))?,
        weights: attrs.values(&weights_name)?.ok_or_else(|| {
            attrs.err(&weights_name, format!("(or {weights_name}_as_tensor) is required but missing"))
        })?,
    };
    let base_values = attrs.values("base_values")?;
    Ok(Spec { operator, kind, post_transform, base_values, nodes, leaves })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: INTS, ints: v.to_vec(), ..Default::default() }
    }

    fn attr_strings(name: &str, v: &[&str]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: STRINGS,
            strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
            ..Default::default()
        }
    }

    fn attr_floats(name: &str, v: &[f32]) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: FLOATS, floats: v.to_vec(), ..Default::default() }
    }

    fn stump() -> NodeProto {
        NodeProto {
            op_type: "TreeEnsembleRegressor".into(),
            attribute: vec![
                AttributeProto { name: "n_targets".into(), r#type: INT, i: 1, ..Default::default() },
                attr_ints("nodes_treeids", &[0, 0, 0]),
                attr_ints("nodes_nodeids", &[0, 1, 2]),
                attr_ints("nodes_featureids", &[0, 0, 0]),
                attr_strings("nodes_modes", &["BRANCH_LEQ", "LEAF", "LEAF"]),
                attr_floats("nodes_values", &[0.5, 0.0, 0.0]),
                attr_ints("nodes_truenodeids", &[1, 0, 0]),
                attr_ints("nodes_falsenodeids", &[2, 0, 0]),
                attr_ints("target_treeids", &[0, 0]),
                attr_ints("target_nodeids", &[1, 2]),
                attr_ints("target_ids", &[0, 0]),
                attr_floats("target_weights", &[1.0, 2.0]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn reads_a_regressor_stump() {
        let spec = parse(&stump(), Operator::Regressor).unwrap();
        assert_eq!(spec.kind, SpecKind::Regressor { n_targets: 1, aggregate: Aggregate::Sum });
        assert_eq!(spec.nodes.modes, vec![Some(Mode::Leq), None, None]);
        assert_eq!(spec.leaves.weights, Values::F32(vec![1.0, 2.0]));
        assert_eq!(spec.post_transform, PostTransform::None);
    }

    #[test]
    fn names_the_attribute_and_value_it_refuses() {
        type Edit = Box<dyn Fn(&mut NodeProto)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|n| n.attribute.push(attr_ints("nodes_colours", &[1]))),
                "TreeEnsembleRegressor attribute `nodes_colours` is not an attribute of this operator",
            ),
            (
                Box::new(|n| {
                    n.attribute[4] = attr_strings("nodes_modes", &["BRANCH_MEMBER", "LEAF", "LEAF"])
                }),
                "TreeEnsembleRegressor attribute `nodes_modes` holds `BRANCH_MEMBER`",
            ),
            (
                Box::new(|n| {
                    n.attribute.push(AttributeProto {
                        name: "aggregate_function".into(),
                        r#type: STRING,
                        s: b"MEDIAN".to_vec(),
                        ..Default::default()
                    })
                }),
                "TreeEnsembleRegressor attribute `aggregate_function` is `MEDIAN`",
            ),
            (
                Box::new(|n| n.attribute[1] = attr_floats("nodes_treeids", &[0.0])),
                "TreeEnsembleRegressor attribute `nodes_treeids` is a list of floats but must be a list of ints",
            ),
            (
                Box::new(|n| {
                    n.attribute.remove(0);
                }),
                "TreeEnsembleRegressor attribute `n_targets` is required",
            ),
            (
                Box::new(|n| {
                    n.attribute.push(AttributeProto {
                        name: "nodes_values_as_tensor".into(),
                        r#type: TENSOR,
                        t: Some(TensorProto {
                            data_type: 1,
                            dims: vec![3],
                            float_data: vec![0.5, 0., 0.],
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                }),
                "TreeEnsembleRegressor attribute `nodes_values` and nodes_values_as_tensor are both given",
            ),
            (
                Box::new(|n| {
                    n.attribute.push(AttributeProto {
                        name: "post_transform".into(),
                        r#type: STRING,
                        s: b"TANH".to_vec(),
                        ..Default::default()
                    })
                }),
                "TreeEnsembleRegressor attribute `post_transform` is `TANH`",
            ),
        ];
        for (edit, message) in cases {
            let mut node = stump();
            edit(&mut node);
            let err = parse(&node, Operator::Regressor).unwrap_err().to_string();
            assert!(err.starts_with(message), "{err}\n  does not start with\n{message}");
        }
    }

    #[test]
    fn reads_double_tensors_from_raw_bytes() {
        let mut node = stump();
        node.attribute[5] = AttributeProto {
            name: "nodes_values_as_tensor".into(),
            r#type: TENSOR,
            t: Some(TensorProto {
                data_type: 11,
                dims: vec![3],
                raw_data: [0.25f64, 0.0, 0.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let spec = parse(&node, Operator::Regressor).unwrap();
        assert_eq!(spec.nodes.values, Values::F64(vec![0.25, 0.0, 0.0]));
    }
}
