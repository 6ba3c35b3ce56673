//! The kernel against a straightforward reference walk over the attributes themselves (random
//! forests, every node mode, NaN inputs, shuffled node order), and the refusals.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::trees::attrs::{LeafAttrs, NodeAttrs, Operator};

/// A small deterministic generator, so a failing seed reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Thresholds and inputs come from this small set, so equality (EQ/NEQ, LEQ vs LT) happens.
const GRID: [f32; 7] = [-1.5, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0];

struct Forest {
    spec: Spec,
    n_features: usize,
}

/// A random forest: `trees` trees up to depth 5, node ids shuffled, listing order shuffled
/// within each tree (root listed first), leaves with 1–3 weights.
/// `dense` gives every leaf one weight per output, in shuffled order.
fn random_forest(
    rng: &mut Rng,
    n_outputs: usize,
    uniform: Option<Mode>,
    kind: SpecKind,
    one_weight: bool,
    dense: bool,
    nan_true: bool,
) -> Forest {
    let n_features = 1 + rng.below(5);
    let trees = 1 + rng.below(6);
    let mut nodes = NodeAttrs {
        tree_ids: vec![],
        node_ids: vec![],
        feature_ids: vec![],
        modes: vec![],
        values: Values::F32(vec![]),
        true_ids: vec![],
        false_ids: vec![],
        missing_tracks_true: vec![],
    };
    let mut thresholds = vec![];
    let mut leaves =
        LeafAttrs { tree_ids: vec![], node_ids: vec![], ids: vec![], weights: Values::F32(vec![]) };
    let mut weights = vec![];
    for tree in 0..trees {
        // Grow the tree shape: (mode, feature, threshold, missing, children) by local index.
        struct Local {
            mode: Option<Mode>,
            feature: i64,
            threshold: f32,
            missing: bool,
            children: (usize, usize),
        }
        let mut local: Vec<Local> = vec![];
        let mut frontier = vec![(0usize, 0usize)]; // (local index, depth)
        local.push(Local { mode: None, feature: 0, threshold: 0.0, missing: false, children: (0, 0) });
        while let Some((i, depth)) = frontier.pop() {
            if depth < 5 && rng.chance(if depth == 0 { 85 } else { 60 }) {
                let mode = uniform.unwrap_or(Mode::ALL[rng.below(6)]);
                let t = local.len();
                local.push(Local {
                    mode: None,
                    feature: 0,
                    threshold: 0.0,
                    missing: false,
                    children: (0, 0),
                });
                let f = local.len();
                local.push(Local {
                    mode: None,
                    feature: 0,
                    threshold: 0.0,
                    missing: false,
                    children: (0, 0),
                });
                local[i] = Local {
                    mode: Some(mode),
                    feature: rng.below(n_features) as i64,
                    threshold: GRID[rng.below(GRID.len())],
                    missing: if uniform.is_none() { rng.chance(40) } else { nan_true },
                    children: (t, f),
                };
                frontier.push((t, depth + 1));
                frontier.push((f, depth + 1));
            }
        }
        // Random ids, root listed first, the rest shuffled.
        let mut ids: Vec<i64> = (0..local.len() as i64).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i + 1));
        }
        let mut order: Vec<usize> = (1..local.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        order.insert(0, 0);
        for &i in &order {
            let l = &local[i];
            nodes.tree_ids.push(tree as i64);
            nodes.node_ids.push(ids[i]);
            nodes.feature_ids.push(l.feature);
            nodes.modes.push(l.mode);
            thresholds.push(l.threshold);
            nodes.true_ids.push(if l.mode.is_some() { ids[l.children.0] } else { 0 });
            nodes.false_ids.push(if l.mode.is_some() { ids[l.children.1] } else { 0 });
            nodes.missing_tracks_true.push(i64::from(l.missing));
            if l.mode.is_none() {
                let count = if dense {
                    n_outputs
                } else if one_weight {
                    1
                } else {
                    1 + rng.below(3)
                };
                let mut targets: Vec<usize> = (0..n_outputs).collect();
                for i in (1..targets.len()).rev() {
                    targets.swap(i, rng.below(i + 1));
                }
                for &target in &targets[..count.min(n_outputs)] {
                    leaves.tree_ids.push(tree as i64);
                    leaves.node_ids.push(ids[i]);
                    leaves.ids.push(if dense { target } else { rng.below(n_outputs) } as i64);
                    weights.push(GRID[rng.below(GRID.len())] * (1 + rng.below(3)) as f32);
                }
            }
        }
    }
    nodes.values = Values::F32(thresholds);
    leaves.weights = Values::F32(weights);
    let operator = match kind {
        SpecKind::Classifier { .. } => Operator::Classifier,
        SpecKind::Regressor { .. } => Operator::Regressor,
    };
    let spec = Spec { operator, kind, post_transform: PostTransform::None, base_values: None, nodes, leaves };
    Forest { spec, n_features }
}

/// The reference: walk each tree by looking nodes up by (tree, id) in the attribute lists,
/// exactly as the operator's documentation reads, and aggregate with plain loops.
fn reference(spec: &Spec, row: &[f32]) -> Vec<(f32, bool)> {
    let nd = &spec.nodes;
    let Values::F32(thresholds) = &nd.values else { unreachable!() };
    let Values::F32(weights) = &spec.leaves.weights else { unreachable!() };
    let by_id: HashMap<(i64, i64), usize> =
        (0..nd.tree_ids.len()).map(|i| ((nd.tree_ids[i], nd.node_ids[i]), i)).collect();
    let (n_outputs, aggregate) = match &spec.kind {
        SpecKind::Classifier { labels } => (labels.len(), Aggregate::Sum),
        SpecKind::Regressor { n_targets, aggregate } => (*n_targets, *aggregate),
    };
    let mut roots = vec![];
    for i in 0..nd.tree_ids.len() {
        if i == 0 || nd.tree_ids[i] != nd.tree_ids[i - 1] {
            roots.push(i);
        }
    }
    let mut out = vec![(0.0f32, false); n_outputs];
    for &root in &roots {
        let mut i = root;
        while let Some(mode) = nd.modes[i] {
            let x = row[nd.feature_ids[i] as usize];
            let t = thresholds[i];
            let holds = match mode {
                Mode::Leq => x <= t,
                Mode::Lt => x < t,
                Mode::Gte => x >= t,
                Mode::Gt => x > t,
                Mode::Eq => x == t,
                Mode::Neq => x != t,
            };
            let go_true = holds || (nd.missing_tracks_true[i] == 1 && x.is_nan());
            let next = if go_true { nd.true_ids[i] } else { nd.false_ids[i] };
            i = by_id[&(nd.tree_ids[i], next)];
        }
        for j in 0..spec.leaves.ids.len() {
            if spec.leaves.tree_ids[j] == nd.tree_ids[i] && spec.leaves.node_ids[j] == nd.node_ids[i] {
                let slot = &mut out[spec.leaves.ids[j] as usize];
                let w = weights[j];
                slot.0 = match aggregate {
                    Aggregate::Sum | Aggregate::Average => slot.0 + w,
                    Aggregate::Min => {
                        if slot.1 {
                            slot.0.min(w)
                        } else {
                            w
                        }
                    }
                    Aggregate::Max => {
                        if slot.1 {
                            slot.0.max(w)
                        } else {
                            w
                        }
                    }
                };
                slot.1 = true;
            }
        }
    }
    if aggregate == Aggregate::Average {
        for slot in &mut out {
            slot.0 /= roots.len() as f32;
        }
    }
    out
}

fn ensemble_is_dense(spec: &Spec) -> bool {
    Ensemble::<f32>::build(spec).unwrap().dense.is_some()
}

fn random_rows(rng: &mut Rng, rows: usize, width: usize) -> Vec<f32> {
    (0..rows * width)
        .map(|_| {
            if rng.chance(10) {
                f32::NAN
            } else {
                GRID[rng.below(GRID.len())] + if rng.chance(30) { 0.125 } else { 0.0 }
            }
        })
        .collect()
}

fn run(e: &Ensemble<f32>, x: &[f32], rows: usize, width: usize) -> (Vec<f32>, Vec<i64>) {
    let mut scores = vec![0.0; rows * e.n_outputs()];
    let mut labels = vec![0; if e.is_classifier() { rows } else { 0 }];
    e.run(x, rows, width, &mut scores, &mut labels).unwrap();
    (scores, labels)
}

#[allow(clippy::too_many_arguments)]
fn check_against_reference(
    seed: u64,
    uniform: Option<Mode>,
    nan_true: bool,
    aggregate: Aggregate,
    targets: usize,
    rows: usize,
    dense: bool,
) {
    let mut rng = Rng(seed | 1);
    let kind = SpecKind::Regressor { n_targets: targets, aggregate };
    let forest = random_forest(&mut rng, targets, uniform, kind, targets == 1, dense, nan_true);
    if dense && targets > 1 {
        assert!(ensemble_is_dense(&forest.spec));
    }
    let ensemble = Ensemble::<f32>::build(&forest.spec).unwrap();
    if let Some(mode) = uniform
        && ensemble.nodes.iter().any(|n| n.bits & LEAF == 0)
    {
        let expected = if nan_true { Walker::UniformNanTrue(mode) } else { Walker::Uniform(mode) };
        assert_eq!(ensemble.walker, expected);
    }
    let width = forest.n_features + rng.below(2);
    let x = random_rows(&mut rng, rows, width);
    let (scores, _) = run(&ensemble, &x, rows, width);
    // Every walk gives the same scores, whatever the trees' shapes.
    for kind in [
        super::Strategy::Blind(0),
        super::Strategy::BlindWide(0),
        super::Strategy::Refill,
        super::Strategy::Scalar,
    ] {
        assert_eq!(run(&ensemble.with_every_tree(kind), &x, rows, width).0, scores, "seed {seed}: {kind:?}");
    }
    for r in 0..rows {
        let expected = reference(&forest.spec, &x[r * width..(r + 1) * width]);
        for (t, &(value, has)) in expected.iter().enumerate() {
            let expected = if targets == 1 || has { value } else { 0.0 };
            let found = scores[r * targets + t];
            assert!(
                found == expected || (found - expected).abs() <= 1e-5 * expected.abs().max(1.0),
                "seed {seed}: row {r} target {t}: kernel {found}, reference {expected}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn kernel_matches_reference_walk_with_mixed_modes_and_nan(seed in any::<u64>(), agg in 0usize..4, targets in 1usize..4, rows in 1usize..150, dense in any::<bool>()) {
        let aggregate = [Aggregate::Sum, Aggregate::Average, Aggregate::Min, Aggregate::Max][agg];
        check_against_reference(seed, None, false, aggregate, targets, rows, dense);
    }

    #[test]
    fn kernel_matches_reference_walk_for_every_uniform_mode(seed in any::<u64>(), mode in 0usize..6, nan_true in any::<bool>(), targets in 1usize..3, rows in 1usize..150) {
        check_against_reference(seed, Some(Mode::ALL[mode]), nan_true, Aggregate::Sum, targets, rows, false);
    }

    #[test]
    fn multiclass_labels_are_the_first_best_scoring_class(seed in any::<u64>(), rows in 1usize..100, dense in any::<bool>()) {
        let mut rng = Rng(seed | 1);
        let labels = Labels::Int(vec![7, 3, 11, 5]);
        let forest = random_forest(&mut rng, 4, None, SpecKind::Classifier { labels }, false, dense, false);
        let ensemble = Ensemble::<f32>::build(&forest.spec).unwrap();
        let x = random_rows(&mut rng, rows, forest.n_features);
        let (scores, found) = run(&ensemble, &x, rows, forest.n_features);
        for r in 0..rows {
            let expected = reference(&forest.spec, &x[r * forest.n_features..(r + 1) * forest.n_features]);
            let mut best: Option<(usize, f32)> = None;
            for (j, &(v, has)) in expected.iter().enumerate() {
                if has && best.is_none_or(|(_, b)| v > b) {
                    best = Some((j, v));
                }
                let want = if has { v } else { 0.0 };
                prop_assert!((scores[r * 4 + j] - want).abs() <= 1e-5 * want.abs().max(1.0));
            }
            prop_assert_eq!(found[r], [7, 3, 11, 5][best.unwrap().0]);
        }
    }
}

/// A one-split stump: x[0] <= 0.5 → leaf 1, else leaf 2.
fn stump(kind: SpecKind, leaf_ids: Vec<i64>, leaf_nodes: Vec<i64>, weights: Vec<f32>) -> Spec {
    let operator = match kind {
        SpecKind::Classifier { .. } => Operator::Classifier,
        SpecKind::Regressor { .. } => Operator::Regressor,
    };
    Spec {
        operator,
        kind,
        post_transform: PostTransform::None,
        base_values: None,
        nodes: NodeAttrs {
            tree_ids: vec![0, 0, 0],
            node_ids: vec![0, 1, 2],
            feature_ids: vec![0, 0, 0],
            modes: vec![Some(Mode::Leq), None, None],
            values: Values::F32(vec![0.5, 0.0, 0.0]),
            true_ids: vec![1, 0, 0],
            false_ids: vec![2, 0, 0],
            missing_tracks_true: vec![],
        },
        leaves: LeafAttrs {
            tree_ids: vec![0; leaf_ids.len()],
            node_ids: leaf_nodes,
            ids: leaf_ids,
            weights: Values::F32(weights),
        },
    }
}

fn regressor_stump() -> Spec {
    stump(
        SpecKind::Regressor { n_targets: 1, aggregate: Aggregate::Sum },
        vec![0, 0],
        vec![1, 2],
        vec![1.0, 2.0],
    )
}

#[test]
fn refuses_broken_structures_naming_node_and_tree() {
    type Edit = Box<dyn Fn(&mut Spec)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|s| s.nodes.true_ids[0] = 9),
            "TreeEnsembleRegressor attribute `nodes_truenodeids` sends node 0 of tree 0 to node 9, which tree 0 does not have",
        ),
        (
            Box::new(|s| s.nodes.false_ids[0] = 0),
            "TreeEnsembleRegressor attribute `nodes_falsenodeids` sends node 0 of tree 0 to itself",
        ),
        (Box::new(|s| s.nodes.node_ids[2] = 1), "TreeEnsembleRegressor: node 1 of tree 0 is listed twice"),
        (
            Box::new(|s| {
                s.nodes.modes[1] = Some(Mode::Lt);
                s.nodes.true_ids[1] = 0;
                s.nodes.false_ids[1] = 2;
            }),
            "TreeEnsembleRegressor: tree 0 loops back to node 0",
        ),
        (
            Box::new(|s| {
                s.leaves.node_ids = vec![1];
                s.leaves.tree_ids = vec![0];
                s.leaves.ids = vec![0];
                s.leaves.weights = Values::F32(vec![1.0]);
            }),
            "TreeEnsembleRegressor: leaf node 2 of tree 0 has no weight",
        ),
        (
            Box::new(|s| s.leaves.ids[1] = 1),
            "TreeEnsembleRegressor attribute `target_ids` gives weight 1 target 1, but there are 1 targets",
        ),
        (
            Box::new(|s| s.leaves.node_ids[1] = 5),
            "TreeEnsembleRegressor attribute `target_nodeids` gives weight 1 to node 5 of tree 0, which does not exist",
        ),
        (
            Box::new(|s| s.nodes.feature_ids.pop().map(drop).unwrap_or(())),
            "TreeEnsembleRegressor attribute `nodes_featureids` has 2 entries but nodes_treeids has 3",
        ),
        (
            Box::new(|s| s.nodes.feature_ids[0] = -1),
            "TreeEnsembleRegressor attribute `nodes_featureids` gives node 0 of tree 0 feature -1",
        ),
        (
            Box::new(|s| s.base_values = Some(Values::F32(vec![1.0, 2.0]))),
            "TreeEnsembleRegressor attribute `base_values` has 2 values for 1 targets",
        ),
        (
            Box::new(|s| {
                s.leaves.tree_ids.push(0);
                s.leaves.node_ids.push(1);
                s.leaves.ids.push(0);
                s.leaves.weights = Values::F32(vec![1.0, 2.0, 3.0]);
            }),
            "TreeEnsembleRegressor: a leaf of this single-target regressor has 2 weights",
        ),
        (
            Box::new(|s| {
                s.nodes.tree_ids = vec![0, 1, 0];
            }),
            "TreeEnsembleRegressor: the nodes of tree 0 are not listed together",
        ),
        (
            Box::new(|s| s.nodes.values = Values::F64(vec![0.5, 0.0, 0.0])),
            "TreeEnsembleRegressor attribute `nodes_values` holds DOUBLE values",
        ),
    ];
    for (edit, message) in cases {
        let mut spec = regressor_stump();
        edit(&mut spec);
        let err = Ensemble::<f32>::build(&spec).unwrap_err().to_string();
        assert!(err.starts_with(message), "{err}\n  does not start with\n{message}");
    }
    // Doubles are fine for an FP64 input.
    let mut spec = regressor_stump();
    spec.nodes.values = Values::F64(vec![0.5, 0.0, 0.0]);
    assert!(Ensemble::<f64>::build(&spec).is_ok());
}

#[test]
fn refuses_binary_cases_onnxruntime_leaves_undefined() {
    let labels = || SpecKind::Classifier { labels: Labels::Int(vec![0, 1]) };
    // Leaves weigh class 0 only, PROBIT: onnxruntime writes one probability of two.
    let mut spec = stump(labels(), vec![0, 0], vec![1, 2], vec![0.2, 0.9]);
    spec.post_transform = PostTransform::Probit;
    let err = Ensemble::<f32>::build(&spec).unwrap_err().to_string();
    assert!(err.contains("`post_transform` is PROBIT on a binary classifier"), "{err}");
    // Both classes weighed, but not by every leaf, and one base value.
    let mut spec = stump(labels(), vec![0, 1, 0], vec![1, 1, 2], vec![0.2, 0.8, 0.9]);
    spec.base_values = Some(Values::F32(vec![0.1]));
    let err = Ensemble::<f32>::build(&spec).unwrap_err().to_string();
    assert!(err.contains("`base_values` has one value on a binary classifier"), "{err}");
    // One label is not a classifier.
    let spec =
        stump(SpecKind::Classifier { labels: Labels::Int(vec![4]) }, vec![0, 0], vec![1, 2], vec![1.0, 1.0]);
    assert!(Ensemble::<f32>::build(&spec).unwrap_err().to_string().contains("needs at least two"));
}

#[test]
fn gradient_boosting_style_binary_follows_onnxruntime() {
    // skl2onnx's binary gradient boosting: class-0 leaves, mixed signs, one base value, LOGISTIC.
    let mut spec = stump(
        SpecKind::Classifier { labels: Labels::Int(vec![0, 1]) },
        vec![0, 0],
        vec![1, 2],
        vec![-1.0, 2.0],
    );
    spec.base_values = Some(Values::F32(vec![0.5]));
    spec.post_transform = PostTransform::Logistic;
    let e = Ensemble::<f32>::build(&spec).unwrap();
    let (scores, labels) = run(&e, &[0.0, 1.0], 2, 1);
    // Row 0: score -0.5 → label 0; row 1: 2.5 → label 1; probabilities [σ(-s), σ(s)].
    assert_eq!(labels, vec![0, 1]);
    for (row, s) in [-0.5f32, 2.5].into_iter().enumerate() {
        assert!((scores[row * 2] - logistic(-s)).abs() < 1e-7);
        assert!((scores[row * 2 + 1] - logistic(s)).abs() < 1e-7);
    }
}

#[test]
fn random_forest_style_binary_labels_are_zero_or_one() {
    // Leaves weigh both classes, no base values: onnxruntime labels 1 when the class-1 score
    // is positive, and writes the literal 1/0 (not the class label).
    let spec = stump(
        SpecKind::Classifier { labels: Labels::Int(vec![10, 20]) },
        vec![0, 1, 0, 1],
        vec![1, 1, 2, 2],
        vec![1.0, 0.0, 0.25, 0.75],
    );
    let e = Ensemble::<f32>::build(&spec).unwrap();
    let (scores, labels) = run(&e, &[0.0, 1.0, f32::NAN], 3, 1);
    assert_eq!(labels, vec![0, 1, 1]);
    assert_eq!(scores, vec![1.0, 0.0, 0.25, 0.75, 0.25, 0.75]);
}

#[test]
fn post_transforms_match_onnxruntime_formulas() {
    assert!((logistic(0.0) - 0.5).abs() < 1e-7);
    assert!((logistic(-3.0) - (1.0 - 1.0 / (1.0 + (-3.0f32).exp()))).abs() < 1e-7);
    // probit(Φ(1)) ≈ 1 within the approximation's error.
    assert!((probit(0.841_344_7) - 1.0).abs() < 2e-3);
    assert!(probit(0.5).abs() < 1e-6);
    let z = &mut [0.0f32; 3];
    let s = [Acc { score: 1.0f32, has: true }, Acc { score: 0.0, has: true }, Acc { score: 2.0, has: false }];
    write_scores(&s, PostTransform::SoftmaxZero, z);
    // The zero score and the untouched one stay 0; the other takes everything.
    assert_eq!(z, &[1.0, 0.0, 0.0]);
}

#[test]
fn rejects_inputs_that_do_not_fit() {
    let e = Ensemble::<f32>::build(&regressor_stump()).unwrap();
    let mut scores = vec![0.0; 2];
    let err = e.run(&[0.0, 1.0], 2, 0, &mut scores, &mut []).unwrap_err().to_string();
    assert_eq!(err, "TreeEnsembleRegressor input has 0 features per row but the trees read feature 0");
    assert!(e.run(&[0.0], 2, 1, &mut scores, &mut []).is_err());
}

/// Garbage attributes: a valid random forest with a few random mutations — ids out of range
/// or negative, children anywhere (cycles, other trees, itself), weights on branches or on
/// missing nodes or for missing outputs, odd base values and label counts. Building must
/// refuse or succeed, never panic; whatever builds must run on any rows.
fn garbage_spec(rng: &mut Rng) -> Spec {
    let outputs = 1 + rng.below(4);
    let kind = if rng.chance(50) {
        SpecKind::Classifier { labels: Labels::Int((0..outputs.max(2) as i64).collect()) }
    } else {
        let aggregate = [Aggregate::Sum, Aggregate::Average, Aggregate::Min, Aggregate::Max][rng.below(4)];
        SpecKind::Regressor { n_targets: outputs, aggregate }
    };
    let k = match &kind {
        SpecKind::Classifier { labels } => labels.len(),
        SpecKind::Regressor { n_targets, .. } => *n_targets,
    };
    let dense = rng.chance(30);
    let mut spec = random_forest(rng, k, None, kind, k == 1, dense, false).spec;
    spec.post_transform = [
        PostTransform::None,
        PostTransform::Softmax,
        PostTransform::Logistic,
        PostTransform::SoftmaxZero,
        PostTransform::Probit,
    ][rng.below(5)];
    if rng.chance(40) {
        spec.base_values = Some(Values::F32((0..rng.below(k + 2)).map(|i| i as f32 - 1.0).collect()));
    }
    let n = spec.nodes.tree_ids.len();
    let m = spec.leaves.ids.len();
    let junk = |rng: &mut Rng| rng.below(12) as i64 - 2;
    for _ in 0..rng.below(4) {
        let i = rng.below(n);
        match rng.below(9) {
            0 => spec.nodes.true_ids[i] = junk(rng),
            1 => spec.nodes.false_ids[i] = junk(rng),
            2 => spec.nodes.node_ids[i] = junk(rng),
            3 => spec.nodes.tree_ids[i] = junk(rng),
            4 => spec.nodes.feature_ids[i] = junk(rng),
            5 => spec.nodes.modes[i] = if spec.nodes.modes[i].is_some() { None } else { Some(Mode::Gt) },
            6 if m > 0 => spec.leaves.node_ids[rng.below(m)] = junk(rng),
            7 if m > 0 => spec.leaves.ids[rng.below(m)] = junk(rng),
            _ => spec.nodes.missing_tracks_true[i] = junk(rng),
        }
    }
    spec
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn garbage_attributes_never_panic(seed in any::<u64>(), rows in 0usize..80) {
        let mut rng = Rng(seed | 1);
        let spec = garbage_spec(&mut rng);
        if let Ok(e) = Ensemble::<f32>::build(&spec) {
            let width = e.n_features() + rng.below(2);
            let x = random_rows(&mut rng, rows, width);
            let mut scores = vec![0.0; rows * e.n_outputs()];
            let mut labels = vec![0; if e.is_classifier() { rows } else { 0 }];
            prop_assert!(e.run(&x, rows, width, &mut scores, &mut labels).is_ok());
        }
    }
}

#[test]
fn garbage_generator_reaches_the_kernel() {
    // The property above is only worth something if some garbage builds and runs.
    let built = (1..2000u64)
        .filter(|&seed| Ensemble::<f32>::build(&garbage_spec(&mut Rng(seed * 7919))).is_ok())
        .count();
    assert!(built >= 100, "only {built} of 2000 garbage ensembles built");
}
