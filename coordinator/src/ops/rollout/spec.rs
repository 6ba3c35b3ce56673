//! What an operator asks for: a rollout's spec (`outpostctl rollout start`, a spec file, the
//! API's body), its defaults and checks, and the steps its strategy takes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::gates::{self, Gate, Thresholds};

/// What to do with a device that stops reporting during a wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflinePolicy {
    #[default]
    Wait,
    Skip,
    Fail,
}

/// What an operator asks for (`outpostctl rollout start`, or a spec file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    pub model: String,
    pub version: String,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    /// `waves` only: cumulative percent of the targets per wave, increasing, ending at 100
    /// (empty: 10, 50, 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<f64>,
    /// `canary` only: percent of every target's requests the candidate answers per step,
    /// increasing, ending at 100 (the switch of every target to the candidate; empty: 5, 25,
    /// 50, 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<f64>,
    /// Roll out a version the registry has archived (replaced as production); refused without.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_archived: bool,
    /// Make the version production when the rollout succeeds even if its targets are not every
    /// device running the model (a subset succeeding leaves the production version as it is).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promote: bool,
    #[serde(default = "default_bake")]
    pub bake_secs: u64,
    /// Gate expressions (see [`gates`]); empty means [`gates::DEFAULT_GATES`].
    #[serde(default)]
    pub gates: Vec<String>,
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    #[serde(default = "default_min_labels")]
    pub min_labels: u64,
    /// Bake extensions for inconclusive gates before the rollout pauses.
    #[serde(default = "default_extensions")]
    pub max_extensions: u32,
    #[serde(default)]
    pub offline: OfflinePolicy,
    #[serde(default = "default_apply_timeout")]
    pub apply_timeout_secs: u64,
    /// Added to a latency ratio's limit, so microsecond models are not judged on noise.
    #[serde(default = "default_slack")]
    pub latency_slack_ms: f64,
    /// The rollout's error budget: the chance that any of its gates ever gives a wrong verdict
    /// (a false rollback or a false pass) over the whole rollout, split evenly over the gates.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
}

fn default_strategy() -> Strategy {
    Strategy::Waves
}
fn default_waves() -> Vec<f64> {
    vec![10.0, 50.0, 100.0]
}
fn default_steps() -> Vec<f64> {
    vec![5.0, 25.0, 50.0, 100.0]
}
fn default_bake() -> u64 {
    600
}
fn default_min_requests() -> u64 {
    200
}
fn default_min_labels() -> u64 {
    50
}
fn default_extensions() -> u32 {
    2
}
fn default_apply_timeout() -> u64 {
    300
}
fn default_slack() -> f64 {
    1.0
}
fn default_alpha() -> f64 {
    gates::DEFAULT_ALPHA
}

/// How a rollout moves the version onto its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Growing waves of the targets switch their primary.
    Waves,
    /// Every target answers a growing share of requests from the candidate, then switches.
    Canary,
    /// Every target loads it as a standby, then all switch at once.
    BlueGreen,
    /// Every target runs it on copies of requests; nothing switches.
    Shadow,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Waves => "waves",
            Strategy::Canary => "canary",
            Strategy::BlueGreen => "blue-green",
            Strategy::Shadow => "shadow",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Strategy {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Strategy, SpecError> {
        match s {
            "waves" => Ok(Strategy::Waves),
            "canary" => Ok(Strategy::Canary),
            "blue-green" => Ok(Strategy::BlueGreen),
            "shadow" => Ok(Strategy::Shadow),
            other => Err(SpecError::UnknownStrategy(other.chars().take(64).collect())),
        }
    }
}

impl Serialize for Strategy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Strategy, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What is wrong with a rollout spec, naming the field or gate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("unknown strategy `{0}` (waves, canary, blue-green, shadow)")]
    UnknownStrategy(String),
    #[error("`{field}` must list 1 to 20 percentages, e.g. [10, 50, 100]")]
    StepCount { field: &'static str },
    #[error("`{field}` must increase strictly within (0, 100]: {values:?}")]
    NotIncreasing { field: &'static str, values: Vec<f64> },
    #[error("canary `steps` are whole percentages: {0:?}")]
    FractionalCanary(Vec<f64>),
    #[error("the last of `{field}` must be 100; got {last}")]
    LastNot100 { field: &'static str, last: f64 },
    #[error("`{field}` must be {allowed}")]
    OutOfRange { field: &'static str, allowed: &'static str },
    #[error("`min_requests` and `min_labels` must be at least 1: a gate needs evidence")]
    NoEvidence,
    #[error("`alpha` must be in (0, 0.2] (0.01 is a 1 % error budget); got {0}")]
    Alpha(f64),
    #[error("at most 20 gates, not {0}")]
    TooManyGates(usize),
    #[error(transparent)]
    Gate(#[from] gates::GateError),
    #[error(
        "gate `{0}`: a shadow's answers are never returned, so no labels come back for them; gate on `agreement>=X%`"
    )]
    AccuracyInShadow(String),
    #[error("gate `{0}`: agreement is measured by the `shadow` strategy only")]
    AgreementOutsideShadow(String),
    #[error(
        "`{field}` (--{field}) does not apply to the {strategy} strategy: `waves` is for waves, `steps` for canary, and blue-green and shadow take neither"
    )]
    NotForStrategy { field: &'static str, strategy: Strategy },
}

impl RolloutSpec {
    /// Checks every field, naming the first problem.
    pub fn validate(&self) -> Result<Vec<Gate>, SpecError> {
        let strategy = self.strategy;
        if !self.waves.is_empty() && strategy != Strategy::Waves {
            return Err(SpecError::NotForStrategy { field: "waves", strategy });
        }
        if !self.steps.is_empty() && strategy != Strategy::Canary {
            return Err(SpecError::NotForStrategy { field: "steps", strategy });
        }
        let (waves, steps, blue_green) = (self.wave_percents(), self.canary_steps(), vec![100.0]);
        let (field, values) = match self.strategy {
            Strategy::Waves => ("waves", &waves),
            Strategy::Canary => ("steps", &steps),
            Strategy::BlueGreen | Strategy::Shadow => ("waves", &blue_green),
        };
        if values.is_empty() || values.len() > 20 {
            return Err(SpecError::StepCount { field });
        }
        let mut last = 0.0;
        for &w in values {
            if !(w > last && w <= 100.0) {
                return Err(SpecError::NotIncreasing { field, values: values.clone() });
            }
            if field == "steps" && w.fract() != 0.0 {
                return Err(SpecError::FractionalCanary(values.clone()));
            }
            last = w;
        }
        if last != 100.0 {
            return Err(SpecError::LastNot100 { field, last });
        }
        if !(1..=7 * 86_400).contains(&self.bake_secs) {
            return Err(SpecError::OutOfRange {
                field: "bake_secs",
                allowed: "between 1 and 604800 (7 days)",
            });
        }
        if self.min_requests == 0 || self.min_labels == 0 {
            return Err(SpecError::NoEvidence);
        }
        if self.max_extensions > 100 {
            return Err(SpecError::OutOfRange { field: "max_extensions", allowed: "at most 100" });
        }
        if !(1..=86_400).contains(&self.apply_timeout_secs) {
            return Err(SpecError::OutOfRange {
                field: "apply_timeout_secs",
                allowed: "between 1 and 86400",
            });
        }
        if !(self.latency_slack_ms.is_finite() && self.latency_slack_ms >= 0.0) {
            return Err(SpecError::OutOfRange { field: "latency_slack_ms", allowed: "0 or more" });
        }
        if !(self.alpha > 0.0 && self.alpha <= 0.2) {
            return Err(SpecError::Alpha(self.alpha));
        }
        let shadow = self.strategy == Strategy::Shadow;
        let texts: Vec<&str> = match (self.gates.is_empty(), shadow) {
            (true, true) => gates::DEFAULT_SHADOW_GATES.to_vec(),
            (true, false) => gates::DEFAULT_GATES.to_vec(),
            (false, _) => self.gates.iter().map(String::as_str).collect(),
        };
        if texts.len() > 20 {
            return Err(SpecError::TooManyGates(texts.len()));
        }
        let parsed = texts.into_iter().map(Gate::parse).collect::<Result<Vec<Gate>, gates::GateError>>()?;
        if let Some(g) = parsed.iter().find(|g| shadow && g.metric == gates::Metric::Accuracy) {
            return Err(SpecError::AccuracyInShadow(g.text.clone()));
        }
        if let Some(g) = parsed.iter().find(|g| !shadow && g.metric == gates::Metric::Agreement) {
            return Err(SpecError::AgreementOutsideShadow(g.text.clone()));
        }
        Ok(parsed)
    }

    /// What the gates judge with: each of the `gates` gets an equal share of `alpha`.
    pub fn thresholds(&self, gates: usize) -> Thresholds {
        Thresholds {
            min_requests: self.min_requests,
            min_labels: self.min_labels,
            latency_slack_ms: self.latency_slack_ms,
            alpha: self.alpha / gates.max(1) as f64,
        }
    }
}

/// One step of a rollout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// The first `percent` of the targets run the version as their primary.
    Wave(f64),
    /// Every target runs it as a canary answering `percent` of its requests.
    Canary(u8),
    /// Every target runs it as a standby (loaded, validated, answering nothing): no bake.
    Standby,
    /// Every target switches its primary to it at once.
    Switch,
    /// Every target runs it on copies of the requests its primary answers; nothing switches.
    Shadow,
}

impl RolloutSpec {
    /// The waves' cumulative percentages (the default when none were given).
    pub fn wave_percents(&self) -> Vec<f64> {
        if self.waves.is_empty() { default_waves() } else { self.waves.clone() }
    }

    /// The canary's request percentages (the default when none were given).
    pub fn canary_steps(&self) -> Vec<f64> {
        if self.steps.is_empty() { default_steps() } else { self.steps.clone() }
    }

    /// The steps the strategy takes.
    pub fn plan(&self) -> Vec<Step> {
        match self.strategy {
            Strategy::Canary => self
                .canary_steps()
                .iter()
                .map(|&p| if p >= 100.0 { Step::Switch } else { Step::Canary(p as u8) })
                .collect(),
            Strategy::BlueGreen => vec![Step::Standby, Step::Switch],
            Strategy::Shadow => vec![Step::Shadow],
            Strategy::Waves => self.wave_percents().iter().map(|&p| Step::Wave(p)).collect(),
        }
    }

    /// How the strategy moves, for people: `waves 10/50/100 %`, `canary 5/25/50/100 % of requests`, ….
    pub fn movement(&self) -> String {
        let join = |v: Vec<f64>| v.iter().map(|p| format!("{p}")).collect::<Vec<_>>().join("/");
        match self.strategy {
            Strategy::Waves => format!("waves {} % of the targets", join(self.wave_percents())),
            Strategy::Canary => format!("canary {} % of requests", join(self.canary_steps())),
            Strategy::BlueGreen => "blue-green (standby everywhere, then one switch)".into(),
            Strategy::Shadow => "shadow (copies of requests; nothing switches)".into(),
        }
    }
}
