//! Evaluating an ensemble: blocks of rows through each tree in lanes, leaf weights into scores,
//! scores into onnxruntime's outputs.

use super::*;

impl<T: Float> Ensemble<T> {
    /// [`Ensemble::run`] with the given walk through the trees.
    pub(super) fn run_with(
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
    pub(super) fn accumulate_general(&self, x: &[T], width: usize, rows: Range<usize>, acc: &mut [Acc<T>]) {
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
    pub(super) fn accumulate_with<W: Walk, A: Agg>(
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
    pub(super) fn blind_rows<W: Walk, A: Agg, const L: usize>(
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
    pub(super) fn add_leaf<A: Agg>(&self, leaf: u32, scores: &mut [Acc<T>]) {
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
    pub(super) fn finish_classifier(
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
    pub(super) fn finish_regressor(&self, s: &mut [Acc<T>], z: &mut [f32], aggregate: Aggregate) {
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

/// The walk to a leaf for one row; returns the leaf's index.
#[inline(always)]
pub(super) fn walk<T: Float, W: Walk>(nodes: &[Node<T>], root: u32, x: &[T]) -> u32 {
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

pub(super) const LANES: usize = 8;

/// The walks of [`LANES`] consecutive rows (`block`, `width` features each) down one tree,
/// interleaved and branch-free: every lane takes exactly `steps` steps (the tree's depth); a
/// lane at its leaf steps onto itself (a leaf's feature is 0 and both its children are itself).
#[inline(always)]
pub(super) fn walk_blind<T: Float, W: Walk, const L: usize>(
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
pub(super) fn walk_refill<T: Float, W: Walk>(
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

/// How a branch decides.
pub(super) trait Walk {
    fn go_true<T: Float>(bits: u32, x: T, threshold: T) -> bool;
}

/// One mode everywhere and no missing-value tracks: the comparison alone decides.
pub(super) struct Fixed<const M: u32>;

impl<const M: u32> Walk for Fixed<M> {
    #[inline(always)]
    fn go_true<T: Float>(_bits: u32, x: T, threshold: T) -> bool {
        compare(M, x, threshold)
    }
}

/// One mode everywhere, NaN goes true everywhere.
pub(super) struct FixedNanTrue<const M: u32>;

impl<const M: u32> Walk for FixedNanTrue<M> {
    #[inline(always)]
    fn go_true<T: Float>(_bits: u32, x: T, threshold: T) -> bool {
        compare(M, x, threshold) || x.is_nan()
    }
}

/// Per-node modes and missing-value tracks.
pub(super) struct Mixed;

impl Walk for Mixed {
    #[inline(always)]
    fn go_true<T: Float>(bits: u32, x: T, threshold: T) -> bool {
        compare((bits >> MODE_SHIFT) & 7, x, threshold) || (bits & MISSING_TRUE != 0 && x.is_nan())
    }
}

#[inline(always)]
pub(super) fn compare<T: Float>(mode: u32, x: T, t: T) -> bool {
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
pub(super) trait Agg {
    fn add<T: Float>(acc: &mut Acc<T>, w: T);
}

pub(super) struct SumAgg;

pub(super) struct MinAgg;

pub(super) struct MaxAgg;

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
pub(super) fn write_scores<T: Float>(s: &[Acc<T>], post: PostTransform, z: &mut [f32]) {
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
