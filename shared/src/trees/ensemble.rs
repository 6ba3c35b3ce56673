//! The tree-ensemble kernel: a checked, flattened forest built once at load time, and its
//! evaluation with onnxruntime's semantics.
//!
//! Layout: every tree reachable from its root is laid out depth-first (a branch node is
//! followed by its true subtree) in one `Vec` of 16-byte nodes (for f32) holding the threshold,
//! the feature index with the mode / missing-value / leaf bits packed above it, and the two
//! child indices; a leaf's children are itself, and its weights live aside (or, when every leaf
//! weighs every class, as one dense vector per leaf; or, when each leaf has one weight for the
//! same output, in the node itself).
//! Evaluation takes blocks of up to [`BLOCK`] rows tree by tree (the tree stays in cache while
//! the rows go through it). Within a block, rows walk a tree in interleaved lanes so the CPU
//! overlaps their independent loads: on balanced trees every lane takes exactly the tree's
//! depth in steps with no branch at all (a lane at its leaf steps onto itself); on deep,
//! unbalanced ones a lane that arrives takes up the next row; shallow unbalanced ones are
//! walked row by row. The choice is made per tree at load time. One scratch buffer per call
//! holds the scores: nothing is allocated per row.
//!
//! Semantics follow onnxruntime 1.31 (`tree_ensemble_common.h`, `tree_ensemble_aggregator.h`,
//! `ml_common.h`), including its special cases: a branch goes true when the comparison holds or
//! when the value is NaN and the node's missing value tracks true; the first node listed for a
//! tree is its root; a score a class or target never received is written as 0; binary
//! classifiers follow the "binary case" rules (single-class leaves, base values of length 1
//! or 2, labels 1/0 when the leaves weigh both classes); a single-target regressor ignores
//! every post-transform but PROBIT. Where onnxruntime's result would be undefined (it leaves
//! an output element unwritten), the model is refused at load time instead.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Neg, Range, Sub};

use super::TreeError;
use super::attrs::{Aggregate, Labels, Mode, PostTransform, Spec, SpecKind, Values};

/// Rows walked through one tree before moving to the next.
pub const BLOCK: usize = 64;

const FEATURE_MASK: u32 = (1 << 24) - 1;
const MODE_SHIFT: u32 = 24;
const MISSING_TRUE: u32 = 1 << 28;
const LEAF: u32 = 1 << 31;

/// Threshold and score type: f32 for FP32 (and integer) inputs, f64 for FP64 inputs, as in
/// onnxruntime.
pub trait Float:
    Copy
    + PartialOrd
    + Debug
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Neg<Output = Self>
    + Div<Output = Self>
    + AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    const HALF: Self;
    /// The ONNX name of the type, for messages.
    const NAME: &'static str;
    fn is_nan(self) -> bool;
    fn to_f32(self) -> f32;
    fn from_count(n: usize) -> Self;
    /// The attribute's values in this type; narrowing doubles to floats is refused (as
    /// onnxruntime refuses DOUBLE `*_as_tensor` attributes on a float model).
    fn convert(values: &Values) -> Result<Vec<Self>, Narrowing>;
}

/// DOUBLE attribute values for a model whose input is not FP64 (completes "attribute `X` …").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("holds DOUBLE values but the model's input is not FP64 (onnxruntime refuses this too)")]
pub struct Narrowing;

impl Float for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    const HALF: f32 = 0.5;
    const NAME: &'static str = "FLOAT";
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn from_count(n: usize) -> f32 {
        n as f32
    }
    fn convert(values: &Values) -> Result<Vec<f32>, Narrowing> {
        match values {
            Values::F32(v) => Ok(v.clone()),
            Values::F64(_) => Err(Narrowing),
        }
    }
}

impl Float for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    const HALF: f64 = 0.5;
    const NAME: &'static str = "DOUBLE";
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn from_count(n: usize) -> f64 {
        n as f64
    }
    fn convert(values: &Values) -> Result<Vec<f64>, Narrowing> {
        Ok(match values {
            Values::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Values::F64(v) => v.clone(),
        })
    }
}

/// One node of the flattened forest. For a branch, `a`/`b` are the true/false children; for a
/// leaf, both are the leaf itself.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node<T> {
    value: T,
    bits: u32,
    a: u32,
    b: u32,
}

/// One leaf weight: what it adds to which class or target.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Weight<T> {
    target: u32,
    value: T,
}

/// A class's or target's running score; `has` says whether any leaf touched it.
#[derive(Debug, Clone, Copy)]
struct Acc<T> {
    score: T,
    has: bool,
}

impl<T: Float> Acc<T> {
    const EMPTY: Acc<T> = Acc { score: T::ZERO, has: false };

    /// The score as onnxruntime converts it when writing: 0 when never touched.
    fn value(self) -> T {
        if self.has { self.score } else { T::ZERO }
    }
}

/// How rows go down the trees: one fixed comparison everywhere (the common case, no
/// missing-value tracks) or per-node modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walker {
    Uniform(Mode),
    /// One mode everywhere and every node sends NaN to its true child (XGBoost, LightGBM).
    UniformNanTrue(Mode),
    Mixed,
}

#[derive(Debug, Clone, PartialEq)]
enum Finish {
    Classifier {
        /// The label written for each class index: the int labels, or 0..k for string labels.
        codes: Vec<i64>,
        /// Two classes and every leaf weight names the same class.
        binary_case: bool,
        weights_all_positive: bool,
    },
    Regressor {
        aggregate: Aggregate,
    },
}

/// A walk of a block of rows through every tree, adding the leaves' weights into the scores.
type Accumulate<T> = fn(&Ensemble<T>, &[T], usize, Range<usize>, &mut [Acc<T>]);

/// A checked, flattened tree ensemble ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Ensemble<T> {
    /// Leaves point to themselves (`a == b ==` their own index), so a walk may step past
    /// its leaf while other rows of the same block are still walking.
    nodes: Vec<Node<T>>,
    /// Per node: a leaf's weights, as (first, count) in `weights` (or its start in `dense`).
    leaf_weights: Vec<(u32, u32)>,
    roots: Vec<u32>,
    /// Per tree: how a block of rows walks it (chosen from the tree's shape at load time).
    strategies: Vec<Strategy>,
    weights: Vec<Weight<T>>,
    n_outputs: usize,
    n_features: usize,
    walker: Walker,
    /// When every leaf weighs every output exactly once, its weights in output order, `k` per
    /// leaf (a leaf's `a` then indexes here): the common random-forest case, added as a
    /// dense vector.
    dense: Option<Vec<T>>,
    /// When every leaf holds exactly one weight and all for the same output: that output
    /// (each leaf's weight is then its `value`). Regressors with one target, and the binary
    /// classifiers of scikit-learn, XGBoost and LightGBM.
    single: Option<u32>,
    finish: Finish,
    post_transform: PostTransform,
    base: Vec<T>,
}

fn mode_code(mode: Mode) -> u32 {
    match mode {
        Mode::Leq => 0,
        Mode::Lt => 1,
        Mode::Gte => 2,
        Mode::Gt => 3,
        Mode::Eq => 4,
        Mode::Neq => 5,
    }
}

impl<T: Float> Ensemble<T> {
    /// Scores per row: the number of classes or targets.
    pub fn n_outputs(&self) -> usize {
        self.n_outputs
    }

    /// The narrowest input (features per row) the ensemble can read.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Whether this is a classifier (which also writes a label per row).
    pub fn is_classifier(&self) -> bool {
        matches!(self.finish, Finish::Classifier { .. })
    }

    /// The same ensemble walking every tree the given way (`Blind` takes each tree's own
    /// depth): lets tests run every walk on the same forest.
    #[cfg(test)]
    fn with_every_tree(&self, kind: Strategy) -> Ensemble<T> {
        let mut e = self.clone();
        let mut budget = u64::MAX;
        e.strategies = e
            .roots
            .iter()
            .map(|&root| match kind {
                Strategy::Blind(_) => {
                    Strategy::Blind(depths(&e.nodes, root, &mut budget).map_or(0, |d| d.0 as u32))
                }
                Strategy::BlindWide(_) => {
                    Strategy::BlindWide(depths(&e.nodes, root, &mut budget).map_or(0, |d| d.0 as u32))
                }
                other => other,
            })
            .collect();
        e
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }
}

impl Ensemble<f32> {
    /// Evaluates `rows` rows of `width` features (`x` row-major), writing `n_outputs()` scores
    /// per row into `scores` and, for a classifier, a label code per row into `labels` (the
    /// int label, or the index of a string label).
    pub fn run(
        &self,
        x: &[f32],
        rows: usize,
        width: usize,
        scores: &mut [f32],
        labels: &mut [i64],
    ) -> Result<(), TreeError> {
        self.run_with(Self::accumulate_specialized, x, rows, width, scores, labels)
    }

    /// FP32 sums (classifiers, SUM and AVERAGE regressors) get a walk compiled for their one
    /// comparison; the rest takes the general walk.
    fn accumulate_specialized(&self, x: &[f32], width: usize, rows: Range<usize>, acc: &mut [Acc<f32>]) {
        if matches!(self.finish, Finish::Regressor { aggregate: Aggregate::Min | Aggregate::Max }) {
            return self.accumulate_general(x, width, rows, acc);
        }
        match self.walker {
            Walker::Uniform(Mode::Leq) => self.accumulate_with::<Fixed<0>, SumAgg>(x, width, rows, acc),
            Walker::Uniform(Mode::Lt) => self.accumulate_with::<Fixed<1>, SumAgg>(x, width, rows, acc),
            Walker::Uniform(Mode::Gte) => self.accumulate_with::<Fixed<2>, SumAgg>(x, width, rows, acc),
            Walker::Uniform(Mode::Gt) => self.accumulate_with::<Fixed<3>, SumAgg>(x, width, rows, acc),
            Walker::Uniform(Mode::Eq) => self.accumulate_with::<Fixed<4>, SumAgg>(x, width, rows, acc),
            Walker::Uniform(Mode::Neq) => self.accumulate_with::<Fixed<5>, SumAgg>(x, width, rows, acc),
            Walker::UniformNanTrue(Mode::Leq) => {
                self.accumulate_with::<FixedNanTrue<0>, SumAgg>(x, width, rows, acc)
            }
            Walker::UniformNanTrue(Mode::Lt) => {
                self.accumulate_with::<FixedNanTrue<1>, SumAgg>(x, width, rows, acc)
            }
            Walker::UniformNanTrue(Mode::Gte) => {
                self.accumulate_with::<FixedNanTrue<2>, SumAgg>(x, width, rows, acc)
            }
            Walker::UniformNanTrue(Mode::Gt) => {
                self.accumulate_with::<FixedNanTrue<3>, SumAgg>(x, width, rows, acc)
            }
            Walker::UniformNanTrue(Mode::Eq) => {
                self.accumulate_with::<FixedNanTrue<4>, SumAgg>(x, width, rows, acc)
            }
            Walker::UniformNanTrue(Mode::Neq) => {
                self.accumulate_with::<FixedNanTrue<5>, SumAgg>(x, width, rows, acc)
            }
            Walker::Mixed => self.accumulate_with::<Mixed, SumAgg>(x, width, rows, acc),
        }
    }
}

impl Ensemble<f64> {
    /// As [`Ensemble::<f32>::run`], for FP64 inputs (general walk only).
    pub fn run(
        &self,
        x: &[f64],
        rows: usize,
        width: usize,
        scores: &mut [f32],
        labels: &mut [i64],
    ) -> Result<(), TreeError> {
        self.run_with(Self::accumulate_general, x, rows, width, scores, labels)
    }
}

/// How a block of rows walks one tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    /// Balanced enough (deepest leaf at most twice the average depth plus 4): lanes of rows
    /// take exactly this many steps.
    Blind(u32),
    /// The same with twice the lanes, for larger trees (32 leaves or more), where more
    /// independent walks in flight measured faster (and slower on small ones).
    BlindWide(u32),
    /// Deep, unbalanced tree: lanes that arrive take up the next row.
    Refill,
    /// Shallow, unbalanced tree: one row after the other (the arrival branch would cost more
    /// than the short walks gain from lanes).
    Scalar,
}

/// onnxruntime's `ComputeLogistic`.
pub fn logistic(v: f32) -> f32 {
    let e = 1.0 / (1.0 + (-v.abs()).exp());
    if v < 0.0 { 1.0 - e } else { e }
}

/// onnxruntime's `ComputeProbit`: √2 · erfinv(2v − 1) with its closed-form erfinv
/// approximation (Winitzki, a = 0.147), reproduced as is so the results agree.
pub fn probit(v: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * v - 1.0)
}

fn erf_inv(x: f32) -> f32 {
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sign * v3.sqrt()
}

mod build;
mod eval;

#[cfg(test)]
use build::depths;
use eval::*;

#[cfg(test)]
mod tests;
