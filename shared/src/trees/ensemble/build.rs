//! Building an ensemble: checking every attribute, node and tree of the spec, laying the forest
//! out depth-first, and choosing each tree's walk.

use super::*;

impl<T: Float> Ensemble<T> {
    /// Checks the structure of `spec` and lays the forest out for evaluation. Every problem
    /// is reported with the attribute, node or tree it concerns.
    pub fn build(spec: &Spec) -> Result<Ensemble<T>, TreeError> {
        let checked = Checked::check(spec)?;
        let (n_outputs, max_feature) = (checked.n_outputs, checked.max_feature);
        let layout = checked.layout()?;
        Self::finish(spec, layout, n_outputs, max_feature)
    }

    /// The walk, base values, finalization rules and weight storage of a laid-out forest.
    fn finish(
        spec: &Spec,
        layout: Layout<T>,
        n_outputs: usize,
        max_feature: i64,
    ) -> Result<Ensemble<T>, TreeError> {
        let Layout { mut nodes, weights, roots } = layout;
        let op = spec.operator.op_type();
        let bad = |problem: String| TreeError::Structure { op, problem };
        let attr_err = |name: &str, problem: String| attribute(op, name, problem);
        let lv = &spec.leaves;
        let m = lv.ids.len();
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
            Some(v) => T::convert(v).map_err(|p| attr_err("base_values", p.to_string()))?,
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
}

/// `spec`'s attribute `name` is unusable.
fn attribute(op: &'static str, name: &str, problem: String) -> TreeError {
    TreeError::Attribute { op, name: name.to_owned(), problem }
}

/// A spec whose attributes agree in length and type, with its nodes indexed, every leaf's
/// weights grouped in listed order, and its trees' first-listed nodes as roots.
struct Checked<'s, T> {
    spec: &'s Spec,
    op: &'static str,
    thresholds: Vec<T>,
    /// `class` or `target`: the prefix of the leaf attributes' names.
    prefix: &'static str,
    n_outputs: usize,
    leaf_values: Vec<T>,
    /// (tree, node id) → position in the node attributes.
    index: HashMap<(i64, i64), usize>,
    roots_old: Vec<usize>,
    max_feature: i64,
    /// Node `i`'s weights are `grouped[first[i]..first[i + 1]]` (indices into the leaf attributes).
    first: Vec<usize>,
    grouped: Vec<usize>,
}

/// The forest laid out depth-first from every root.
struct Layout<T> {
    nodes: Vec<Node<T>>,
    weights: Vec<Weight<T>>,
    roots: Vec<u32>,
}

impl<'s, T: Float> Checked<'s, T> {
    /// Checks every attribute and node reference of `spec`.
    fn check(spec: &'s Spec) -> Result<Checked<'s, T>, TreeError> {
        let op = spec.operator.op_type();
        let bad = |problem: String| TreeError::Structure { op, problem };
        let attr_err = |name: &str, problem: String| attribute(op, name, problem);
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
        let thresholds = T::convert(&nd.values).map_err(|p| attr_err("nodes_values", p.to_string()))?;

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
        let leaf_values =
            T::convert(&lv.weights).map_err(|p| attr_err(&format!("{prefix}_weights"), p.to_string()))?;

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
        Ok(Checked {
            spec,
            op,
            thresholds,
            prefix,
            n_outputs,
            leaf_values,
            index,
            roots_old,
            max_feature,
            first,
            grouped,
        })
    }

    /// The position of node `i`'s child named in `ids` (`name` is the attribute, for errors).
    fn child(&self, i: usize, ids: &[i64], name: &str) -> Result<usize, TreeError> {
        let nd = &self.spec.nodes;
        let (tree, id) = (nd.tree_ids[i], nd.node_ids[i]);
        match self.index.get(&(tree, ids[i])) {
            None => Err(attribute(
                self.op,
                name,
                format!("sends node {id} of tree {tree} to node {}, which tree {tree} does not have", ids[i]),
            )),
            Some(&c) if c == i => {
                Err(attribute(self.op, name, format!("sends node {id} of tree {tree} to itself")))
            }
            Some(&c) => Ok(c),
        }
    }

    /// Lays the forest out depth-first from every root (a branch is followed by its true
    /// subtree), refusing cycles; shared subtrees are laid out once.
    fn layout(&self) -> Result<Layout<T>, TreeError> {
        let Checked { spec, thresholds, prefix, leaf_values, roots_old, first, grouped, .. } = self;
        let (nd, lv, n) = (&spec.nodes, &spec.leaves, spec.nodes.tree_ids.len());
        let bad = |problem: String| TreeError::Structure { op: self.op, problem };
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
        for &root in roots_old {
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
                        let t = self.child(i, &nd.true_ids, "nodes_truenodeids")?;
                        let f = self.child(i, &nd.false_ids, "nodes_falsenodeids")?;
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
        Ok(Layout { nodes, weights, roots })
    }
}

/// Chooses the walk for the tree at `root` from its leaf depths (measured on this machine's
/// fixtures: blind lanes win on balanced trees, refilled lanes on deep ones, plain walks on
/// shallow unbalanced ones). Gives up (scalar) once `budget` node visits are spent: shared
/// subtrees can make paths exponentially many.
pub(super) fn strategy<T>(nodes: &[Node<T>], root: u32, budget: &mut u64) -> Strategy {
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
pub(super) fn depths<T>(nodes: &[Node<T>], root: u32, budget: &mut u64) -> Option<(u64, u64, u64)> {
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
pub(super) fn densify<T: Float>(nodes: &mut [Node<T>], weights: &[Weight<T>], k: usize) -> Option<Vec<T>> {
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
