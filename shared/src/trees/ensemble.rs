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
    fn convert(values: &Values) -> Result<Vec<Self>, String>;
}

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
    fn convert(values: &Values) -> Result<Vec<f32>, String> {
        match values {
            Values::F32(v) => Ok(v.clone()),
            Values::F64(_) => {
                Err("holds DOUBLE values but the model's input is not FP64 (onnxruntime refuses this too)"
                    .into())
            }
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
    fn convert(values: &Values) -> Result<Vec<f64>, String> {
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
    /// Checks the structure of `spec` and lays the forest out for evaluation. Every problem
    /// is reported with the attribute, node or tree it concerns.
    pub fn build(spec: &Spec) -> Result<Ensemble<T>, TreeError> {
        let op = spec.operator.op_type();
        let bad = |problem: String| TreeError::Structure { op, problem };
        let attr_err =
            |name: &str, problem: String| TreeError::Attribute { op, name: name.to_owned(), problem };
        let nd = &spec.nodes;
        let n = nd.tree_ids.len();
        if n == 0 {
            return Err(bad("the ensemble has no nodes (nodes_treeids is empty)".into()));
        }
        if n >= (u32::MAX / 2) as usize {
            return Err(bad(format!("the ensemble has {n} nodes, more than this kernel supports")));
        }
        for (name, len) in [
            ("nodes_nodeids", nd.node_ids.len()),
            ("nodes_featureids", nd.feature_ids.len()),
            ("nodes_modes", nd.modes.len()),
            ("nodes_values", nd.values.len()),
            ("nodes_truenodeids", nd.true_ids.len()),
            ("nodes_falsenodeids", nd.false_ids.len()),
        ] {
            if len != n {
                return Err(attr_err(name, format!("has {len} entries but nodes_treeids has {n}")));
            }
        }
        if !nd.missing_tracks_true.is_empty() && nd.missing_tracks_true.len() != n {
            return Err(attr_err(
                "nodes_missing_value_tracks_true",
                format!("has {} entries but nodes_treeids has {n}", nd.missing_tracks_true.len()),
            ));
        }
        let thresholds = T::convert(&nd.values).map_err(|p| attr_err("nodes_values", p))?;

        let (prefix, n_outputs) = match &spec.kind {
            SpecKind::Classifier { labels } => ("class", labels.len()),
            SpecKind::Regressor { n_targets, .. } => ("target", *n_targets),
        };
        let lv = &spec.leaves;
        let m = lv.ids.len();
        for (name, len) in
            [("treeids", lv.tree_ids.len()), ("nodeids", lv.node_ids.len()), ("weights", lv.weights.len())]
        {
            if len != m {
                return Err(attr_err(
                    &format!("{prefix}_{name}"),
                    format!("has {len} entries but {prefix}_ids has {m}"),
                ));
            }
        }
        let leaf_values = T::convert(&lv.weights).map_err(|p| attr_err(&format!("{prefix}_weights"), p))?;

        // Index the nodes; the first node listed for a tree is its root (as in onnxruntime).
        let mut index: HashMap<(i64, i64), usize> = HashMap::with_capacity(n);
        let mut roots_old = Vec::new();
        let mut trees_seen = HashSet::new();
        let mut previous = None;
        let mut max_feature = 0i64;
        for i in 0..n {
            let (tree, id) = (nd.tree_ids[i], nd.node_ids[i]);
            if index.insert((tree, id), i).is_some() {
                return Err(bad(format!("node {id} of tree {tree} is listed twice")));
            }
            if previous != Some(tree) {
                if !trees_seen.insert(tree) {
                    return Err(bad(format!(
                        "the nodes of tree {tree} are not listed together (onnxruntime would count it as two trees)"
                    )));
                }
                roots_old.push(i);
                previous = Some(tree);
            }
            let feature = nd.feature_ids[i];
            if !(0..=i64::from(FEATURE_MASK)).contains(&feature) {
                return Err(attr_err(
                    "nodes_featureids",
                    format!(
                        "gives node {id} of tree {tree} feature {feature}; features must be in 0..={FEATURE_MASK}"
                    ),
                ));
            }
            max_feature = max_feature.max(feature);
        }
        let child = |i: usize, ids: &[i64], name: &str| -> Result<usize, TreeError> {
            let (tree, id) = (nd.tree_ids[i], nd.node_ids[i]);
            match index.get(&(tree, ids[i])) {
                None => Err(attr_err(
                    name,
                    format!(
                        "sends node {id} of tree {tree} to node {}, which tree {tree} does not have",
                        ids[i]
                    ),
                )),
                Some(&c) if c == i => {
                    Err(attr_err(name, format!("sends node {id} of tree {tree} to itself")))
                }
                Some(&c) => Ok(c),
            }
        };

        // Leaf weights, grouped by leaf in their listed order (onnxruntime sorts by
        // (tree, node) and keeps the listed order within a leaf).
        let mut owner: Vec<Option<usize>> = Vec::with_capacity(m);
        for j in 0..m {
            let (tree, id) = (lv.tree_ids[j], lv.node_ids[j]);
            let Some(&i) = index.get(&(tree, id)) else {
                return Err(attr_err(
                    &format!("{prefix}_nodeids"),
                    format!("gives weight {j} to node {id} of tree {tree}, which does not exist"),
                ));
            };
            let target = lv.ids[j];
            if usize::try_from(target).map_or(true, |t| t >= n_outputs) {
                let what = if prefix == "class" { "classes" } else { "targets" };
                return Err(attr_err(
                    &format!("{prefix}_ids"),
                    format!("gives weight {j} {prefix} {target}, but there are {n_outputs} {what}"),
                ));
            }
            // Weights on branch nodes are ignored, as onnxruntime does (old onnxmltools wrote them).
            owner.push(nd.modes[i].is_none().then_some(i));
        }
        let mut first = vec![0usize; n + 1];
        for i in owner.iter().flatten() {
            first[i + 1] += 1;
        }
        for i in 0..n {
            first[i + 1] += first[i];
        }
        let mut fill = first.clone();
        let mut grouped = vec![0usize; first[n]];
        for (j, o) in owner.iter().enumerate() {
            if let Some(i) = o {
                grouped[fill[*i]] = j;
                fill[*i] += 1;
            }
        }

        // Depth-first layout from every root, refusing cycles; shared subtrees are laid out once.
        let mut placed: Vec<Option<u32>> = vec![None; n];
        let mut on_path = vec![false; n];
        let mut nodes: Vec<Node<T>> = Vec::with_capacity(n);
        let mut weights: Vec<Weight<T>> = Vec::with_capacity(first[n]);
        let mut roots = Vec::with_capacity(roots_old.len());
        let mut old_children: Vec<(usize, usize)> = Vec::new();
        enum Step {
            Enter(usize),
            Leave(usize),
        }
        let mut stack = Vec::new();
        for &root in &roots_old {
            stack.push(Step::Enter(root));
            while let Some(step) = stack.pop() {
                let i = match step {
                    Step::Leave(i) => {
                        on_path[i] = false;
                        continue;
                    }
                    Step::Enter(i) => i,
                };
                if on_path[i] {
                    return Err(bad(format!(
                        "tree {} loops back to node {} (a tree must not have cycles)",
                        nd.tree_ids[i], nd.node_ids[i]
                    )));
                }
                if placed[i].is_some() {
                    continue;
                }
                let new = nodes.len() as u32;
                placed[i] = Some(new);
                match nd.modes[i] {
                    Some(mode) => {
                        let t = child(i, &nd.true_ids, "nodes_truenodeids")?;
                        let f = child(i, &nd.false_ids, "nodes_falsenodeids")?;
                        let missing = nd.missing_tracks_true.get(i) == Some(&1);
                        let bits = (nd.feature_ids[i] as u32)
                            | (mode_code(mode) << MODE_SHIFT)
                            | if missing { MISSING_TRUE } else { 0 };
                        nodes.push(Node { value: thresholds[i], bits, a: 0, b: 0 });
                        old_children.push((t, f));
                        on_path[i] = true;
                        stack.push(Step::Leave(i));
                        stack.push(Step::Enter(f));
                        stack.push(Step::Enter(t));
                    }
                    None => {
                        let own = &grouped[first[i]..first[i + 1]];
                        if own.is_empty() {
                            return Err(bad(format!(
                                "leaf node {} of tree {} has no weight ({prefix}_nodeids never names it)",
                                nd.node_ids[i], nd.tree_ids[i]
                            )));
                        }
                        let start = weights.len() as u32;
                        weights.extend(
                            own.iter().map(|&j| Weight { target: lv.ids[j] as u32, value: leaf_values[j] }),
                        );
                        nodes.push(Node {
                            value: leaf_values[own[0]],
                            bits: LEAF,
                            a: start,
                            b: own.len() as u32,
                        });
                        old_children.push((usize::MAX, usize::MAX));
                    }
                }
            }
            roots.push(placed[root].unwrap_or_default());
        }
        // Every child of a placed branch was entered, hence placed.
        for (node, &(t, f)) in nodes.iter_mut().zip(&old_children) {
            if node.bits & LEAF == 0 {
                node.a =
                    placed.get(t).copied().flatten().ok_or_else(|| bad("internal layout error".into()))?;
                node.b =
                    placed.get(f).copied().flatten().ok_or_else(|| bad("internal layout error".into()))?;
            }
        }

        let mut modes = nodes.iter().filter(|n| n.bits & LEAF == 0).map(|n| n.bits & !FEATURE_MASK);
        let walker = match modes.next() {
            None => Walker::Uniform(Mode::Leq),
            Some(first) if modes.all(|b| b == first) => {
                let mode = Mode::ALL[((first >> MODE_SHIFT) & 7) as usize];
                if first & MISSING_TRUE == 0 { Walker::Uniform(mode) } else { Walker::UniformNanTrue(mode) }
            }
            Some(_) => Walker::Mixed,
        };

        let base = match &spec.base_values {
            None => Vec::new(),
            Some(v) => T::convert(v).map_err(|p| attr_err("base_values", p))?,
        };
        let leaves_lacking = |class: u32| {
            nodes.iter().any(|n| {
                n.bits & LEAF != 0
                    && !weights[n.a as usize..(n.a + n.b) as usize].iter().any(|w| w.target == class)
            })
        };
        let finish = match &spec.kind {
            SpecKind::Classifier { labels } => {
                let k = labels.len();
                if k < 2 {
                    return Err(attr_err(
                        "classlabels_int64s",
                        format!("(or classlabels_strings) has {k} labels; a classifier needs at least two"),
                    ));
                }
                let allowed = if k == 2 { base.len() <= 2 } else { base.is_empty() || base.len() == k };
                if !allowed {
                    return Err(attr_err(
                        "base_values",
                        format!("has {} values for {k} classes; expected none or {k}", base.len()),
                    ));
                }
                let distinct: HashSet<i64> = lv.ids.iter().copied().collect();
                let binary_case = k == 2 && distinct.len() == 1;
                // NaN weights count as positive, as onnxruntime's `w < 0` test has it.
                let weights_all_positive =
                    (0..m).all(|j| lv.weights.get_f64(j).is_none_or(|w| w >= 0.0 || w.is_nan()));
                if k == 2 && base.len() < 2 && leaves_lacking(1) {
                    if spec.post_transform == PostTransform::Probit {
                        return Err(attr_err(
                            "post_transform",
                            "is PROBIT on a binary classifier whose leaves do not all weigh class 1: onnxruntime \
                             leaves the second probability undefined for such rows, so this model is refused"
                                .into(),
                        ));
                    }
                    if !binary_case && base.len() == 1 {
                        return Err(attr_err(
                            "base_values",
                            "has one value on a binary classifier whose leaves weigh both classes but not all \
                             weigh class 1: onnxruntime leaves the second probability undefined for such rows, \
                             so this model is refused"
                                .into(),
                        ));
                    }
                }
                let codes = match labels {
                    Labels::Int(v) => v.clone(),
                    Labels::Str(v) => (0..v.len() as i64).collect(),
                };
                Finish::Classifier { codes, binary_case, weights_all_positive }
            }
            SpecKind::Regressor { n_targets, aggregate } => {
                if !base.is_empty() && base.len() != *n_targets {
                    return Err(attr_err(
                        "base_values",
                        format!(
                            "has {} values for {n_targets} targets; expected none or {n_targets}",
                            base.len()
                        ),
                    ));
                }
                if *n_targets == 1
                    && let Some(leaf) = nodes.iter().find(|n| n.bits & LEAF != 0 && n.b != 1)
                {
                    return Err(bad(format!(
                        "a leaf of this single-target regressor has {} weights; onnxruntime uses only the first, \
                         so such a model is refused",
                        leaf.b
                    )));
                }
                Finish::Regressor { aggregate: *aggregate }
            }
        };

        let dense = densify(&mut nodes, &weights, n_outputs);
        let mut leaves = nodes.iter().filter(|n| n.bits & LEAF != 0);
        let single = match leaves.next().map(|l| (l.b, weights[l.a as usize].target)) {
            Some((1, target))
                if dense.is_none() && leaves.all(|l| l.b == 1 && weights[l.a as usize].target == target) =>
            {
                Some(target)
            }
            _ => None,
        };
        // Dense or single leaves keep their weights elsewhere: the sparse list is not needed.
        let weights = if dense.is_some() || single.is_some() { Vec::new() } else { weights };
        // Shared subtrees can make paths exponentially many: the depth survey has a budget.
        let mut budget = 4 * nodes.len() as u64 + 1024;
        let strategies = roots.iter().map(|&root| strategy(&nodes, root, &mut budget)).collect();
        let mut leaf_weights = vec![(0, 0); nodes.len()];
        for (i, node) in nodes.iter_mut().enumerate() {
            if node.bits & LEAF != 0 {
                leaf_weights[i] = (node.a, node.b);
                (node.a, node.b) = (i as u32, i as u32);
            }
        }
        Ok(Ensemble {
            nodes,
            leaf_weights,
            roots,
            strategies,
            weights,
            n_outputs,
            n_features: usize::try_from(max_feature).unwrap_or(0) + 1,
            walker,
            dense,
            single,
            finish,
            post_transform: spec.post_transform,
            base,
        })
    }

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

    /// [`Ensemble::run`] with the given walk through the trees.
    fn run_with(
        &self,
        accumulate: Accumulate<T>,
        x: &[T],
        rows: usize,
        width: usize,
        scores: &mut [f32],
        labels: &mut [i64],
    ) -> Result<(), TreeError> {
        let k = self.n_outputs;
        let op = if self.is_classifier() { "TreeEnsembleClassifier" } else { "TreeEnsembleRegressor" };
        if width < self.n_features {
            return Err(TreeError::Input {
                op,
                problem: format!(
                    "has {width} features per row but the trees read feature {}",
                    self.n_features - 1
                ),
            });
        }
        let want_labels = if self.is_classifier() { rows } else { 0 };
        if Some(x.len()) != rows.checked_mul(width)
            || Some(scores.len()) != rows.checked_mul(k)
            || labels.len() != want_labels
        {
            return Err(TreeError::Input { op, problem: "buffers do not match the number of rows".into() });
        }
        let mut acc = vec![Acc::<T>::EMPTY; rows.min(BLOCK) * k];
        let mut start = 0;
        while start < rows {
            let end = (start + BLOCK).min(rows);
            let acc = &mut acc[..(end - start) * k];
            acc.fill(Acc::EMPTY);
            accumulate(self, x, width, start..end, acc);
            for (r, row) in (start..end).enumerate() {
                let a = &mut acc[r * k..(r + 1) * k];
                let z = &mut scores[row * k..(row + 1) * k];
                match &self.finish {
                    Finish::Classifier { codes, binary_case, weights_all_positive } => {
                        labels[row] =
                            self.finish_classifier(a, z, codes, *binary_case, *weights_all_positive);
                    }
                    Finish::Regressor { aggregate } => self.finish_regressor(a, z, *aggregate),
                }
            }
            start = end;
        }
        Ok(())
    }

    /// The general walk: per-node modes and missing-value tracks, any aggregate. What FP64
    /// models and MIN/MAX regressors use (rare enough not to be worth specialized code).
    fn accumulate_general(&self, x: &[T], width: usize, rows: Range<usize>, acc: &mut [Acc<T>]) {
        match self.finish {
            Finish::Classifier { .. }
            | Finish::Regressor { aggregate: Aggregate::Sum | Aggregate::Average } => {
                self.accumulate_with::<Mixed, SumAgg>(x, width, rows, acc)
            }
            Finish::Regressor { aggregate: Aggregate::Min } => {
                self.accumulate_with::<Mixed, MinAgg>(x, width, rows, acc)
            }
            Finish::Regressor { aggregate: Aggregate::Max } => {
                self.accumulate_with::<Mixed, MaxAgg>(x, width, rows, acc)
            }
        }
    }

    #[inline(never)]
    fn accumulate_with<W: Walk, A: Agg>(
        &self,
        x: &[T],
        width: usize,
        rows: Range<usize>,
        acc: &mut [Acc<T>],
    ) {
        let k = self.n_outputs;
        let nodes = self.nodes.as_slice();
        let count = rows.len();
        let features = |r: usize| &x[(rows.start + r) * width..(rows.start + r + 1) * width];
        let mut found = [0u32; BLOCK];
        for (&root, &strategy) in self.roots.iter().zip(&self.strategies) {
            match strategy {
                // Lanes of rows go down the tree together: their walks are independent, so the
                // CPU overlaps their loads and comparisons, and nothing branches on where one
                // ends.
                Strategy::Blind(steps) if count >= LANES => {
                    self.blind_rows::<W, A, LANES>(root, steps, x, width, rows.clone(), acc);
                }
                Strategy::BlindWide(steps) if count >= 2 * LANES => {
                    self.blind_rows::<W, A, { 2 * LANES }>(root, steps, x, width, rows.clone(), acc);
                }
                Strategy::Refill if count >= LANES => {
                    let found = &mut found[..count];
                    walk_refill::<T, W>(nodes, root, &x[rows.start * width..rows.end * width], width, found);
                    for (r, &leaf) in found.iter().enumerate() {
                        self.add_leaf::<A>(leaf, &mut acc[r * k..(r + 1) * k]);
                    }
                }
                _ => {
                    for r in 0..count {
                        let leaf = walk::<T, W>(nodes, root, features(r));
                        self.add_leaf::<A>(leaf, &mut acc[r * k..(r + 1) * k]);
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn blind_rows<W: Walk, A: Agg, const L: usize>(
        &self,
        root: u32,
        steps: u32,
        x: &[T],
        width: usize,
        rows: Range<usize>,
        acc: &mut [Acc<T>],
    ) {
        let k = self.n_outputs;
        let count = rows.len();
        let mut r = 0;
        while r + L <= count {
            let block = &x[(rows.start + r) * width..(rows.start + r + L) * width];
            let leaves = walk_blind::<T, W, L>(&self.nodes, root, steps, block, width);
            for (lane, leaf) in leaves.into_iter().enumerate() {
                self.add_leaf::<A>(leaf, &mut acc[(r + lane) * k..(r + lane + 1) * k]);
            }
            r += L;
        }
        for r in r..count {
            let leaf =
                walk::<T, W>(&self.nodes, root, &x[(rows.start + r) * width..(rows.start + r + 1) * width]);
            self.add_leaf::<A>(leaf, &mut acc[r * k..(r + 1) * k]);
        }
    }

    #[inline(always)]
    fn add_leaf<A: Agg>(&self, leaf: u32, scores: &mut [Acc<T>]) {
        if let Some(target) = self.single {
            A::add(&mut scores[target as usize], self.nodes[leaf as usize].value);
            return;
        }
        let (start, count) = self.leaf_weights[leaf as usize];
        match &self.dense {
            Some(dense) => {
                let start = start as usize;
                let k = scores.len();
                for (acc, &w) in scores.iter_mut().zip(&dense[start..start + k]) {
                    A::add(acc, w);
                }
            }
            None => {
                for w in &self.weights[start as usize..(start + count) as usize] {
                    A::add(&mut scores[w.target as usize], w.value);
                }
            }
        }
    }

    /// onnxruntime's `TreeAggregatorClassifier::FinalizeScores`; returns the label code.
    fn finish_classifier(
        &self,
        s: &mut [Acc<T>],
        z: &mut [f32],
        codes: &[i64],
        binary_case: bool,
        all_positive: bool,
    ) -> i64 {
        let base = &self.base;
        if s.len() > 2 {
            for (acc, &b) in s.iter_mut().zip(base) {
                if acc.has {
                    acc.score += b;
                } else {
                    *acc = Acc { score: b, has: true };
                }
            }
            let mut best: Option<(usize, T)> = None;
            for (j, acc) in s.iter().enumerate() {
                if acc.has && best.is_none_or(|(_, w)| acc.score > w) {
                    best = Some((j, acc.score));
                }
            }
            write_scores(s, self.post_transform, z);
            return codes[best.map_or(0, |(j, _)| j)];
        }
        let mut additional: Option<u8> = None;
        let mut single = false;
        match base.len() {
            2 => {
                if s[1].has {
                    s[1].score = base[1] + s[0].score;
                    s[0].score = -s[1].score;
                } else {
                    s[1].score += base[1];
                    s[0].score += base[0];
                }
            }
            1 => {
                s[0].score += base[0];
                single = !s[1].has;
            }
            _ => {
                additional = Some(3);
                single = !s[1].has;
            }
        }
        let (s0, h0) = (s[0].score, s[0].has);
        let (s1, h1) = if !single && s[1].has { (s[1].score, true) } else { (T::ZERO, false) };
        let positive = if h1 {
            s1
        } else if h0 {
            s0
        } else {
            T::ZERO
        };
        let label = if binary_case {
            let (slot, is_positive) = if all_positive {
                if positive > T::HALF { (0, true) } else { (1, false) }
            } else if positive > T::ZERO {
                (2, true)
            } else {
                (3, false)
            };
            additional = Some(slot);
            codes[usize::from(is_positive)]
        } else {
            i64::from(positive > T::ZERO)
        };
        if !single {
            write_scores(&s[..2], self.post_transform, z);
            return label;
        }
        // One score for two classes: onnxruntime derives the second (build refuses the
        // combinations where it leaves one undefined).
        let v = s[0].value();
        // Measured on onnxruntime 1.31.1 (tree_cases/bin_class0_positive_logistic): LOGISTIC
        // wins over the all-positive-weights complement.
        let (first, second) = match additional {
            _ if self.post_transform == PostTransform::Logistic => {
                (logistic((-v).to_f32()), logistic(v.to_f32()))
            }
            Some(0 | 1) => ((T::ONE - v).to_f32(), v.to_f32()),
            _ => ((-v).to_f32(), v.to_f32()),
        };
        z[0] = first;
        z[1] = second;
        label
    }

    /// onnxruntime's regression `FinalizeScores` / `FinalizeScores1`.
    fn finish_regressor(&self, s: &mut [Acc<T>], z: &mut [f32], aggregate: Aggregate) {
        let trees = T::from_count(self.roots.len());
        if s.len() == 1 {
            let origin = if self.base.len() == 1 { self.base[0] } else { T::ZERO };
            let total = match aggregate {
                Aggregate::Sum => s[0].score + origin,
                Aggregate::Average => s[0].score / trees + origin,
                Aggregate::Min | Aggregate::Max => s[0].value() + origin,
            };
            z[0] = if self.post_transform == PostTransform::Probit {
                probit(total.to_f32())
            } else {
                total.to_f32()
            };
            return;
        }
        for (j, acc) in s.iter_mut().enumerate() {
            let base = self.base.get(j).copied().unwrap_or(T::ZERO);
            acc.score = match aggregate {
                Aggregate::Sum => acc.score + base,
                Aggregate::Average => acc.score / trees + base,
                Aggregate::Min | Aggregate::Max => base + acc.value(),
            };
        }
        write_scores(s, self.post_transform, z);
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

/// The walk to a leaf for one row; returns the leaf's index.
#[inline(always)]
fn walk<T: Float, W: Walk>(nodes: &[Node<T>], root: u32, x: &[T]) -> u32 {
    let mut at = root;
    loop {
        let node = &nodes[at as usize];
        if node.bits & LEAF != 0 {
            return at;
        }
        let v = x[(node.bits & FEATURE_MASK) as usize];
        at = if W::go_true(node.bits, v, node.value) { node.a } else { node.b };
    }
}

const LANES: usize = 8;

/// The walks of [`LANES`] consecutive rows (`block`, `width` features each) down one tree,
/// interleaved and branch-free: every lane takes exactly `steps` steps (the tree's depth); a
/// lane at its leaf steps onto itself (a leaf's feature is 0 and both its children are itself).
#[inline(always)]
fn walk_blind<T: Float, W: Walk, const L: usize>(
    nodes: &[Node<T>],
    root: u32,
    steps: u32,
    block: &[T],
    width: usize,
) -> [u32; L] {
    let mut at = [root; L];
    let offsets: [usize; L] = std::array::from_fn(|lane| lane * width);
    for _ in 0..steps {
        for (at, &offset) in at.iter_mut().zip(&offsets) {
            let node = &nodes[*at as usize];
            let v = block[offset + (node.bits & FEATURE_MASK) as usize];
            *at = if W::go_true(node.bits, v, node.value) { node.a } else { node.b };
        }
    }
    at
}

/// The walks of all rows of `block` down one tree, [`LANES`] at a time: a lane whose row
/// reached its leaf takes up the next row, so no lane idles while a deep row is still walking.
#[inline(always)]
fn walk_refill<T: Float, W: Walk>(
    nodes: &[Node<T>],
    root: u32,
    block: &[T],
    width: usize,
    found: &mut [u32],
) {
    const IDLE: usize = usize::MAX;
    let count = found.len();
    let mut at = [root; LANES];
    let mut row: [usize; LANES] = std::array::from_fn(|lane| if lane < count { lane } else { IDLE });
    let mut next = LANES.min(count);
    let mut active = LANES.min(count);
    while active > 0 {
        for (at, row) in at.iter_mut().zip(row.iter_mut()) {
            if *row == IDLE {
                continue;
            }
            let node = &nodes[*at as usize];
            if node.bits & LEAF != 0 {
                found[*row] = *at;
                *at = root;
                if next < count {
                    *row = next;
                    next += 1;
                } else {
                    *row = IDLE;
                    active -= 1;
                }
                continue;
            }
            let v = block[*row * width + (node.bits & FEATURE_MASK) as usize];
            *at = if W::go_true(node.bits, v, node.value) { node.a } else { node.b };
        }
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

/// Chooses the walk for the tree at `root` from its leaf depths (measured on this machine's
/// fixtures: blind lanes win on balanced trees, refilled lanes on deep ones, plain walks on
/// shallow unbalanced ones). Gives up (scalar) once `budget` node visits are spent: shared
/// subtrees can make paths exponentially many.
fn strategy<T>(nodes: &[Node<T>], root: u32, budget: &mut u64) -> Strategy {
    let Some((deepest, total, leaves)) = depths(nodes, root, budget) else {
        return Strategy::Scalar;
    };
    // Measured on the fixtures (forests and boosted trees, depth 4-15): blind lanes beat the
    // others even where the deepest leaf is well below the average; the arrival test only
    // pays on trees far deeper at some leaves than on average.
    let balanced = deepest * leaves <= 2 * total + 4 * leaves;
    if balanced && deepest <= 64 {
        if leaves >= 32 { Strategy::BlindWide(deepest as u32) } else { Strategy::Blind(deepest as u32) }
    } else if total >= 8 * leaves {
        Strategy::Refill
    } else {
        Strategy::Scalar
    }
}

/// The tree's deepest leaf depth, the sum of its leaf depths and its number of leaves (paths,
/// for shared subtrees), or `None` once `budget` node visits are spent.
fn depths<T>(nodes: &[Node<T>], root: u32, budget: &mut u64) -> Option<(u64, u64, u64)> {
    let (mut deepest, mut total, mut leaves) = (0u64, 0u64, 0u64);
    let mut stack = vec![(root, 0u64)];
    while let Some((at, depth)) = stack.pop() {
        *budget = budget.checked_sub(1)?;
        let node = &nodes[at as usize];
        if node.bits & LEAF != 0 {
            deepest = deepest.max(depth);
            total += depth;
            leaves += 1;
        } else {
            stack.push((node.a, depth + 1));
            stack.push((node.b, depth + 1));
        }
    }
    Some((deepest, total, leaves))
}

/// Switches leaves to dense weights when every leaf weighs every output exactly once.
fn densify<T: Float>(nodes: &mut [Node<T>], weights: &[Weight<T>], k: usize) -> Option<Vec<T>> {
    if k < 2 {
        return None;
    }
    let mut dense = Vec::new();
    let mut starts = Vec::new();
    for node in nodes.iter().filter(|n| n.bits & LEAF != 0) {
        let own = &weights[node.a as usize..(node.a + node.b) as usize];
        if own.len() != k {
            return None;
        }
        let start = dense.len();
        dense.resize(start + k, T::ZERO);
        let mut seen = vec![false; k];
        for w in own {
            let t = w.target as usize;
            if std::mem::replace(&mut seen[t], true) {
                return None;
            }
            dense[start + t] = w.value;
        }
        starts.push(start as u32);
    }
    for (node, start) in nodes.iter_mut().filter(|n| n.bits & LEAF != 0).zip(starts) {
        node.a = start;
    }
    Some(dense)
}

/// How a branch decides.
trait Walk {
    fn go_true<T: Float>(bits: u32, x: T, threshold: T) -> bool;
}

/// One mode everywhere and no missing-value tracks: the comparison alone decides.
struct Fixed<const M: u32>;

impl<const M: u32> Walk for Fixed<M> {
    #[inline(always)]
    fn go_true<T: Float>(_bits: u32, x: T, threshold: T) -> bool {
        compare(M, x, threshold)
    }
}

/// One mode everywhere, NaN goes true everywhere.
struct FixedNanTrue<const M: u32>;

impl<const M: u32> Walk for FixedNanTrue<M> {
    #[inline(always)]
    fn go_true<T: Float>(_bits: u32, x: T, threshold: T) -> bool {
        compare(M, x, threshold) || x.is_nan()
    }
}

/// Per-node modes and missing-value tracks.
struct Mixed;

impl Walk for Mixed {
    #[inline(always)]
    fn go_true<T: Float>(bits: u32, x: T, threshold: T) -> bool {
        compare((bits >> MODE_SHIFT) & 7, x, threshold) || (bits & MISSING_TRUE != 0 && x.is_nan())
    }
}

#[inline(always)]
fn compare<T: Float>(mode: u32, x: T, t: T) -> bool {
    match mode {
        0 => x <= t,
        1 => x < t,
        2 => x >= t,
        3 => x > t,
        4 => x == t,
        _ => x != t,
    }
}

/// How leaf weights combine into a score.
trait Agg {
    fn add<T: Float>(acc: &mut Acc<T>, w: T);
}

struct SumAgg;
struct MinAgg;
struct MaxAgg;

impl Agg for SumAgg {
    #[inline(always)]
    fn add<T: Float>(acc: &mut Acc<T>, w: T) {
        acc.score += w;
        acc.has = true;
    }
}

impl Agg for MinAgg {
    #[inline(always)]
    fn add<T: Float>(acc: &mut Acc<T>, w: T) {
        if !acc.has || w < acc.score {
            acc.score = w;
        }
        acc.has = true;
    }
}

impl Agg for MaxAgg {
    #[inline(always)]
    fn add<T: Float>(acc: &mut Acc<T>, w: T) {
        if !acc.has || w > acc.score {
            acc.score = w;
        }
        acc.has = true;
    }
}

/// onnxruntime's `write_scores` for two or more scores: untouched scores count as 0.
fn write_scores<T: Float>(s: &[Acc<T>], post: PostTransform, z: &mut [f32]) {
    for (out, acc) in z.iter_mut().zip(s) {
        *out = acc.value().to_f32();
    }
    match post {
        PostTransform::None => {}
        PostTransform::Logistic => z.iter_mut().for_each(|v| *v = logistic(*v)),
        PostTransform::Probit => z.iter_mut().for_each(|v| *v = probit(*v)),
        PostTransform::Softmax => {
            let max = z.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
            let mut sum = 0.0f32;
            for v in z.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            z.iter_mut().for_each(|v| *v /= sum);
        }
        PostTransform::SoftmaxZero => {
            let max = z.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
            let exp_neg_max = (-max).exp();
            let mut sum = 0.0f32;
            for v in z.iter_mut() {
                if *v > 0.000_000_1 || *v < -0.000_000_1 {
                    *v = (*v - max).exp();
                    sum += *v;
                } else {
                    *v *= exp_neg_max;
                }
            }
            z.iter_mut().for_each(|v| *v /= sum);
        }
    }
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

#[cfg(test)]
mod tests;
