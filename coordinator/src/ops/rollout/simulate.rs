//! The gate simulator (`gate-sim`): thousands of simulated rollouts through the engine's own
//! gate code ([`super::gates::evaluate`]), evidence rule ([`super::bake::evidence_window`]) and
//! bake decisions ([`super::bake::bake_decision`]), with a simulated clock and a seeded RNG, to
//! measure how often a rollout is rolled back, succeeds or pauses — for identical versions (A/A)
//! and for real regressions.
//!
//! The world: `devices` devices, each serving `requests_per_s` requests (Poisson) of which
//! `label_share` get a ground-truth label; the baseline version errs on 1 % of requests and is
//! right on 95 % of labelled ones; latency is log-normal (median 10 ms, σ 0.3: the light tail)
//! or that with 3 % of requests from a Pareto tail (8 ms scale, shape 1.5: the heavy tail), and
//! every 10-second window all devices share a host-load factor (log-normal, σ 0.05). Evidence
//! arrives in 10-second windows, as agents report it; the engine judges every window. A
//! rollout is a `waves` rollout (default 10/50/100 % of 20 devices, 600 s bake, 2 extensions).
//!
//! Latency samples are drawn straight into the histograms' buckets: each distribution's bucket
//! probabilities are estimated once (2,000,000 draws), then every window draws a multinomial over
//! them, which is what recording that many samples would give.

use std::collections::BTreeMap;
use std::time::Instant;

use outpost_shared::histogram::LogHistogram;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rand_distr::{Binomial, Distribution, Poisson, StandardNormal};

use super::bake::{self, BakeDecision};
use super::gates::{self, Evidence, Gate, Thresholds};
use super::{RolloutSpec, Step};

/// How heavy the latency tail is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    Light,
    Heavy,
}

/// What one version does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behaviour {
    pub error_rate: f64,
    pub accuracy: f64,
    /// Every latency multiplied by this.
    pub latency_scale: f64,
}

/// The baseline's behaviour in every scenario.
pub const BASELINE: Behaviour = Behaviour { error_rate: 0.01, accuracy: 0.95, latency_scale: 1.0 };

/// A candidate and the tail it is judged with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scenario {
    pub name: &'static str,
    pub tail: Tail,
    pub candidate: Behaviour,
    /// Whether a rollback is the right outcome.
    pub regression: bool,
}

/// The scenarios the README's table shows.
pub const SCENARIOS: [Scenario; 6] = [
    Scenario { name: "A/A, light tail", tail: Tail::Light, candidate: BASELINE, regression: false },
    Scenario { name: "A/A, heavy tail", tail: Tail::Heavy, candidate: BASELINE, regression: false },
    Scenario {
        name: "accuracy -5 points",
        tail: Tail::Light,
        candidate: Behaviour { accuracy: 0.90, ..BASELINE },
        regression: true,
    },
    Scenario {
        name: "error rate x2",
        tail: Tail::Light,
        candidate: Behaviour { error_rate: 0.02, ..BASELINE },
        regression: true,
    },
    Scenario {
        name: "latency +50%, light tail",
        tail: Tail::Light,
        candidate: Behaviour { latency_scale: 1.5, ..BASELINE },
        regression: true,
    },
    Scenario {
        name: "latency +50%, heavy tail",
        tail: Tail::Heavy,
        candidate: Behaviour { latency_scale: 1.5, ..BASELINE },
        regression: true,
    },
];

/// How much traffic and how many labels each device sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    pub requests_per_s: f64,
    pub label_share: f64,
}

/// The traffic levels the README's table shows.
pub const LEVELS: [Level; 3] = [
    Level { requests_per_s: 2.0, label_share: 0.1 },
    Level { requests_per_s: 10.0, label_share: 0.25 },
    Level { requests_per_s: 50.0, label_share: 0.5 },
];

/// Seconds per evidence window (the agents' default report interval).
pub const WINDOW_SECS: u64 = 10;

/// How one simulated rollout ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    RolledBack { gate: String },
    Succeeded,
    Paused,
}

/// One simulated rollout's end and when it came (seconds after it started).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ending: Ending,
    pub secs: u64,
}

/// Why a simulation cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    #[error("rollout spec: {0}")]
    Spec(#[from] super::SpecError),
    #[error("only the `waves` strategy is simulated (got `{0}`)")]
    Strategy(String),
    #[error("{0}")]
    Invalid(String),
}

/// Bucket probabilities of a latency distribution, in the histograms' own buckets.
#[derive(Debug, Clone)]
pub struct LatencyModel {
    /// (bucket's representative value in µs, probability), ascending.
    buckets: Vec<(f64, f64)>,
}

impl LatencyModel {
    /// Estimates the bucket probabilities of `tail` scaled by `scale` from `draws` samples.
    pub fn new(tail: Tail, scale: f64, draws: u32, seed: u64) -> LatencyModel {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut h = LogHistogram::default();
        for _ in 0..draws {
            let z: f64 = StandardNormal.sample(&mut rng);
            let mut ms = 10.0 * (0.3 * z).exp();
            if tail == Tail::Heavy && rng.random::<f64>() < 0.03 {
                let u: f64 = rng.random::<f64>();
                ms = 8.0 / (1.0 - u).powf(1.0 / 1.5);
            }
            h.record(ms * scale * 1000.0);
        }
        let total = f64::from(draws.max(1));
        let mut buckets = Vec::new();
        let mut previous = h.count();
        for (value, above) in h.values_with_count_above() {
            buckets.push((value, (previous - above) as f64 / total));
            previous = above;
        }
        LatencyModel { buckets }
    }

    /// Records `n` requests drawn from the model, every one multiplied by `load`.
    fn sample_into(&self, n: u64, load: f64, h: &mut LogHistogram, rng: &mut Xoshiro256PlusPlus) {
        let (mut left, mut mass) = (n, 1.0);
        for &(value, p) in &self.buckets {
            if left == 0 {
                break;
            }
            let k = if p >= mass { left } else { binomial(left, (p / mass).clamp(0.0, 1.0), rng) };
            if k > 0 {
                h.record_n(value * load, k);
            }
            left -= k;
            mass -= p;
        }
    }
}

fn binomial(n: u64, p: f64, rng: &mut Xoshiro256PlusPlus) -> u64 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return n;
    }
    Binomial::new(n, p).map_or(0, |b| b.sample(rng))
}

fn poisson(mean: f64, rng: &mut Xoshiro256PlusPlus) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    Poisson::new(mean).map_or(0, |d| {
        let v: f64 = d.sample(rng);
        v as u64
    })
}

/// A rollout setting to simulate, with the world's models built once.
#[derive(Debug, Clone)]
pub struct Simulation {
    pub spec: RolloutSpec,
    pub devices: usize,
    gates: Vec<Gate>,
    thresholds: Thresholds,
    baseline_latency: [LatencyModel; 2],
}

/// One window of one version's traffic on `devices` devices.
fn window(
    behaviour: Behaviour,
    latency: &LatencyModel,
    devices: usize,
    level: Level,
    load: f64,
    rng: &mut Xoshiro256PlusPlus,
    into: &mut Evidence,
) {
    if devices == 0 {
        return;
    }
    let n = poisson(level.requests_per_s * (devices as u64 * WINDOW_SECS) as f64, rng);
    let errors = binomial(n, behaviour.error_rate, rng);
    let labelled = binomial(n, level.label_share, rng);
    let correct = binomial(labelled, behaviour.accuracy, rng);
    into.requests += n;
    into.errors += errors;
    into.labelled += labelled;
    into.correct += correct;
    into.devices = into.devices.max(devices);
    latency.sample_into(n, load, &mut into.latency_us, rng);
}

impl Simulation {
    /// Builds a simulation of `spec` (a `waves` rollout) on `devices` devices.
    pub fn new(spec: RolloutSpec, devices: usize) -> Result<Simulation, SimError> {
        let gates = spec.validate()?;
        if spec.strategy != super::Strategy::Waves {
            return Err(SimError::Strategy(spec.strategy.to_string()));
        }
        if !(1..=10_000).contains(&devices) {
            return Err(SimError::Invalid(format!("devices must be 1 to 10000; got {devices}")));
        }
        let thresholds = spec.thresholds(gates.len());
        let baseline_latency = [
            LatencyModel::new(Tail::Light, 1.0, 2_000_000, 1),
            LatencyModel::new(Tail::Heavy, 1.0, 2_000_000, 2),
        ];
        Ok(Simulation { spec, devices, gates, thresholds, baseline_latency })
    }

    fn baseline_model(&self, tail: Tail) -> &LatencyModel {
        &self.baseline_latency[usize::from(tail == Tail::Heavy)]
    }

    /// The candidate's latency model for `scenario` (the baseline's when it is not slower).
    pub fn candidate_model(&self, scenario: &Scenario) -> Option<LatencyModel> {
        let scale = scenario.candidate.latency_scale;
        (scale != 1.0).then(|| LatencyModel::new(scenario.tail, scale, 2_000_000, 3))
    }

    /// Runs one rollout with the engine's rules; `candidate_latency` from [`Self::candidate_model`].
    pub fn run_one(
        &self,
        scenario: &Scenario,
        candidate_latency: Option<&LatencyModel>,
        level: Level,
        seed: u64,
    ) -> Outcome {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let base_model = self.baseline_model(scenario.tail);
        let cand_model = candidate_latency.unwrap_or(base_model);
        let spec = &self.spec;
        let step_ms = WINDOW_SECS * 1000;
        let created = spec.bake_secs * 1000 + step_ms;
        let load = |rng: &mut Xoshiro256PlusPlus| {
            let z: f64 = StandardNormal.sample(rng);
            (0.05 * z).exp()
        };
        // The baseline's history before the rollout: every target on the old version.
        let mut lookback = Evidence::default();
        let mut t = 0;
        while t < created {
            let l = load(&mut rng);
            window(BASELINE, base_model, self.devices, level, l, &mut rng, &mut lookback);
            t += step_ms;
        }
        let (mut candidate, mut baseline) = (Evidence::default(), Evidence::default());
        let mut now = created;
        let plan = spec.plan();
        for (i, step) in plan.iter().enumerate() {
            let Step::Wave(pct) = *step else { return Outcome { ending: Ending::Paused, secs: 0 } };
            let moved = ((pct / 100.0) * self.devices as f64).ceil() as usize;
            let moved = moved.clamp(1, self.devices);
            // Applying takes one window: the devices download, validate and report.
            let mut bake_until = now + step_ms + spec.bake_secs * 1000;
            let mut extensions = 0;
            loop {
                now += step_ms;
                let l = load(&mut rng);
                window(scenario.candidate, cand_model, moved, level, l, &mut rng, &mut candidate);
                window(BASELINE, base_model, self.devices - moved, level, l, &mut rng, &mut baseline);
                let w = bake::evidence_window(*step, created, now, spec.bake_secs);
                let mut base = baseline.clone();
                if w.baseline_from_ms < w.from_ms {
                    merge(&mut base, &lookback);
                }
                let results: Vec<_> = self
                    .gates
                    .iter()
                    .map(|g| gates::evaluate(g, &candidate, &base, self.thresholds))
                    .collect();
                let secs = (now - created) / 1000;
                match bake::bake_decision(&results, now, bake_until, extensions, spec.max_extensions) {
                    BakeDecision::RollBack(g) => {
                        return Outcome { ending: Ending::RolledBack { gate: g.gate }, secs };
                    }
                    BakeDecision::Continue => {}
                    BakeDecision::Passed if i + 1 == plan.len() => {
                        return Outcome { ending: Ending::Succeeded, secs };
                    }
                    BakeDecision::Passed => break,
                    BakeDecision::Extend(_) => {
                        extensions += 1;
                        bake_until = now + spec.bake_secs * 1000;
                    }
                    BakeDecision::Pause(_) => return Outcome { ending: Ending::Paused, secs },
                }
            }
        }
        Outcome { ending: Ending::Succeeded, secs: (now - created) / 1000 }
    }

    /// Runs `rollouts` rollouts of `scenario` at `level` on `threads` threads.
    pub fn run_many(
        &self,
        scenario: &Scenario,
        level: Level,
        rollouts: u32,
        seed: u64,
        threads: usize,
    ) -> Row {
        let started = Instant::now();
        let model = self.candidate_model(scenario);
        let threads = threads.clamp(1, 64) as u32;
        let outcomes: Vec<Outcome> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|k| {
                    let model = model.as_ref();
                    s.spawn(move || {
                        (k..rollouts)
                            .step_by(threads as usize)
                            .map(|i| {
                                self.run_one(
                                    scenario,
                                    model,
                                    level,
                                    seed ^ (u64::from(i) << 20) ^ 0x9e37_79b9,
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        Row::from_outcomes(scenario, level, &outcomes, started.elapsed().as_secs_f64())
    }
}

fn merge(into: &mut Evidence, other: &Evidence) {
    into.requests += other.requests;
    into.errors += other.errors;
    into.labelled += other.labelled;
    into.correct += other.correct;
    // Both use the default accuracy: merging cannot fail.
    let _ = into.latency_us.merge(&other.latency_us);
}

/// A line of the operating-characteristics table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub scenario: String,
    pub regression: bool,
    pub level: Level,
    pub rollouts: usize,
    pub rolled_back: usize,
    pub succeeded: usize,
    pub paused: usize,
    /// Median seconds from start to the rollout's end, over all rollouts.
    pub median_secs: u64,
    /// Gates that rolled rollouts back, with how often.
    pub failed_gates: BTreeMap<String, usize>,
    pub elapsed_secs: f64,
}

impl Row {
    fn from_outcomes(scenario: &Scenario, level: Level, outcomes: &[Outcome], elapsed_secs: f64) -> Row {
        let mut secs: Vec<u64> = outcomes.iter().map(|o| o.secs).collect();
        secs.sort_unstable();
        let mut failed_gates = BTreeMap::new();
        let (mut rolled_back, mut succeeded, mut paused) = (0, 0, 0);
        for o in outcomes {
            match &o.ending {
                Ending::RolledBack { gate } => {
                    rolled_back += 1;
                    *failed_gates.entry(gate.clone()).or_insert(0) += 1;
                }
                Ending::Succeeded => succeeded += 1,
                Ending::Paused => paused += 1,
            }
        }
        Row {
            scenario: scenario.name.to_owned(),
            regression: scenario.regression,
            level,
            rollouts: outcomes.len(),
            rolled_back,
            succeeded,
            paused,
            median_secs: secs.get(secs.len() / 2).copied().unwrap_or(0),
            failed_gates,
            elapsed_secs,
        }
    }

    fn share(&self, n: usize) -> f64 {
        100.0 * n as f64 / self.rollouts.max(1) as f64
    }

    /// The Markdown table's header.
    pub fn header() -> &'static str {
        "| scenario | traffic per device | rollouts | rolled back | succeeded | paused | median time to decision | gates that rolled back |\n\
         |---|---|---:|---:|---:|---:|---:|---|"
    }

    /// The row as a Markdown table line.
    pub fn markdown(&self) -> String {
        let gates: Vec<String> = self.failed_gates.iter().map(|(g, n)| format!("`{g}` {n}")).collect();
        format!(
            "| {} | {} req/s, {:.0} % labelled | {} | {:.2} % | {:.2} % | {:.2} % | {} | {} |",
            self.scenario,
            self.level.requests_per_s,
            self.level.label_share * 100.0,
            self.rollouts,
            self.share(self.rolled_back),
            self.share(self.succeeded),
            self.share(self.paused),
            duration(self.median_secs),
            if gates.is_empty() { "-".to_owned() } else { gates.join(", ") }
        )
    }
}

fn duration(secs: u64) -> String {
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    } else {
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RolloutSpec {
        serde_json::from_str(r#"{"model": "m", "version": "2"}"#).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_gross_regression_is_rolled_back_and_identical_versions_are_not() {
        let sim = Simulation::new(spec(), 20).unwrap_or_else(|e| panic!("{e}"));
        let high = LEVELS[2];
        let bad = Scenario {
            name: "accuracy -30",
            tail: Tail::Light,
            candidate: Behaviour { accuracy: 0.65, ..BASELINE },
            regression: true,
        };
        let row = sim.run_many(&bad, high, 20, 7, 2);
        assert_eq!(row.rolled_back, 20, "{row:?}");
        assert_eq!(row.failed_gates.get("accuracy>=-2%"), Some(&20), "{row:?}");
        // Caught in the first wave's bake.
        assert!(row.median_secs <= 600, "{row:?}");
        let row = sim.run_many(&SCENARIOS[0], high, 20, 7, 2);
        assert_eq!(row.rolled_back, 0, "{row:?}");
        assert!(row.succeeded >= 18, "{row:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_rollout() {
        let sim = Simulation::new(spec(), 20).unwrap_or_else(|e| panic!("{e}"));
        let a = sim.run_one(&SCENARIOS[2], None, LEVELS[1], 42);
        assert_eq!(a, sim.run_one(&SCENARIOS[2], None, LEVELS[1], 42));
    }

    #[test]
    fn only_waves_are_simulated() {
        let mut s = spec();
        s.strategy = crate::ops::rollout::Strategy::Canary;
        assert_eq!(Simulation::new(s, 20).unwrap_err(), SimError::Strategy("canary".into()));
        assert!(matches!(Simulation::new(spec(), 0), Err(SimError::Invalid(_))));
    }
}
