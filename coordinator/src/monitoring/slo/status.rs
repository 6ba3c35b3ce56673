//! Where a model stands against its objectives: each objective's actual value, compliance,
//! burn rate and budget left over the window, from the roll-ups.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rollup::MINUTE_MS;
use super::{SloSpec, Slos, TrafficWindow};
use crate::base::numbers;
use crate::base::store::StoreError;
use crate::monitoring::quality::Labels;

/// One objective's standing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    pub objective: String,
    /// The share of good events aimed for (availability, the latency percentile, accuracy).
    pub target: f64,
    /// A latency objective's threshold: an event is good when it is faster.
    #[serde(default)]
    pub threshold_ms: Option<f64>,
    /// The measured value: share of good requests, the latency percentile (ms), or accuracy.
    pub actual: Option<f64>,
    pub events: u64,
    pub bad_events: u64,
    pub compliant: bool,
    pub burn_rate: f64,
    /// Share of the window's error budget left (0 when overspent).
    pub budget_remaining: f64,
}

impl Objective {
    /// The target as people read it, in its unit: `≥ 99.5% of requests succeed`,
    /// `95% of requests < 50 ms`, `accuracy ≥ 85%`.
    pub fn target_text(&self) -> String {
        match self.threshold_ms {
            Some(ms) => format!("{} of requests < {}", numbers::percent(self.target), numbers::ms(ms)),
            None if self.objective == "availability" => {
                format!("≥ {} of requests succeed", numbers::percent(self.target))
            }
            None => format!("≥ {}", numbers::percent(self.target)),
        }
    }

    /// The measured value in the target's unit: `99.87%`, `p95 1.44 ms`, or `—` before any event.
    pub fn actual_text(&self) -> String {
        match (self.actual, self.threshold_ms) {
            (None, _) => "—".into(),
            (Some(v), Some(_)) => {
                format!("p{} {}", numbers::decimal(self.target * 100.0), numbers::ms(v))
            }
            (Some(v), None) => numbers::percent(v),
        }
    }
}

/// A model's SLO standing now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloStatus {
    pub model: String,
    pub spec: SloSpec,
    pub from_ms: u64,
    pub to_ms: u64,
    pub objectives: Vec<Objective>,
}

pub(super) fn objective(
    name: &str,
    target: f64,
    actual: Option<f64>,
    events: u64,
    bad: u64,
    compliant: bool,
) -> Objective {
    let allowed = 1.0 - target;
    let bad_share = if events == 0 { 0.0 } else { bad as f64 / events as f64 };
    let burn_rate = bad_share / allowed;
    Objective {
        objective: name.to_owned(),
        target,
        threshold_ms: None,
        actual,
        events,
        bad_events: bad,
        compliant,
        burn_rate,
        budget_remaining: (1.0 - burn_rate).max(0.0),
    }
}

impl Slos {
    /// The standing of `model`'s objectives over its window ending at `now_ms`.
    pub fn status(
        &self,
        labels: &Labels,
        model: &str,
        spec: &SloSpec,
        now_ms: u64,
    ) -> Result<SloStatus, StoreError> {
        let from_ms = now_ms.saturating_sub(spec.window_secs.saturating_mul(1000));
        let from_ms = from_ms - from_ms % MINUTE_MS;
        let TrafficWindow { requests, errors, latency_us: latency } =
            self.rolled_up(model, from_ms, now_ms)?;
        let mut objectives = Vec::new();
        if let Some(target) = spec.availability {
            let actual = (requests > 0).then(|| 1.0 - errors as f64 / requests as f64);
            let compliant = actual.is_none_or(|a| a >= target);
            objectives.push(objective("availability", target, actual, requests, errors, compliant));
        }
        if let Some(l) = spec.latency {
            let threshold_us = l.threshold_ms * 1000.0;
            let value_ms = latency.quantile(l.percentile).map(|us| us / 1000.0);
            let slow = latency.count_above(threshold_us);
            let compliant = value_ms.is_none_or(|v| v <= l.threshold_ms);
            let name = format!(
                "latency p{} < {}",
                numbers::decimal(l.percentile * 100.0),
                numbers::ms(l.threshold_ms)
            );
            let mut o = objective(&name, l.percentile, value_ms, latency.count(), slow, compliant);
            o.threshold_ms = Some(l.threshold_ms);
            objectives.push(o);
        }
        if let Some(floor) = spec.accuracy {
            let crate::monitoring::quality::Tally { labelled, correct } =
                labels.rolled_up(model, from_ms, now_ms)?;
            let actual = (labelled > 0).then(|| correct as f64 / labelled as f64);
            let compliant = actual.is_none_or(|a| a >= floor);
            objectives.push(objective("accuracy", floor, actual, labelled, labelled - correct, compliant));
        }
        Ok(SloStatus { model: model.to_owned(), spec: spec.clone(), from_ms, to_ms: now_ms, objectives })
    }

    /// The standing of every model with objectives.
    pub fn statuses(&self, labels: &Labels, now_ms: u64) -> Result<BTreeMap<String, SloStatus>, StoreError> {
        self.all()?
            .into_iter()
            .map(|(model, spec)| Ok((model.clone(), self.status(labels, &model, &spec, now_ms)?)))
            .collect()
    }
}
