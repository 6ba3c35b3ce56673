//! Where a rollout's evidence comes from: the fleet's traffic and labels per (device, version)
//! as the monitoring floor stores them, summed over a window.

use std::collections::BTreeSet;

use super::gates::Evidence;
use crate::base::store::{Store, StoreError};
use crate::monitoring::quality::Labels;
use crate::monitoring::slo::Slos;

/// Reads evidence of a version on a set of devices.
#[derive(Clone)]
pub struct EvidenceSource {
    slos: Slos,
    labels: Labels,
}

impl std::fmt::Debug for EvidenceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvidenceSource").finish_non_exhaustive()
    }
}

/// Traffic of a set of (device, version) pairs over a window.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    pub requests: u64,
    pub errors: u64,
    pub latency_us: outpost_shared::histogram::LogHistogram,
    /// The start of the oldest window counted, if any.
    pub oldest_ms: Option<u64>,
}

impl EvidenceSource {
    pub fn open(store: &Store) -> Result<EvidenceSource, StoreError> {
        Ok(EvidenceSource { slos: Slos::open(store)?, labels: Labels::open(store)? })
    }

    /// Evidence of `version` on `devices` for windows in `[from, to]`.
    pub fn evidence(
        &self,
        model: &str,
        version: &str,
        devices: &[String],
        from: u64,
        to: u64,
    ) -> Result<Evidence, StoreError> {
        let set: BTreeSet<&str> = devices.iter().map(String::as_str).collect();
        let (requests, errors, latency_us, n) =
            self.slos.traffic_where(model, from, to, |d, v| v == version && set.contains(d))?;
        let (labelled, correct) = self.labels.correct_on(model, version, devices, from, to)?;
        let (compared, agreed) =
            self.slos.shadow_where(model, from, to, |d, v| v == version && set.contains(d))?;
        Ok(Evidence { requests, errors, latency_us, labelled, correct, compared, agreed, devices: n })
    }

    /// Evidence of what each device ran before the rollout: `previous` maps a device to its
    /// version, so a fleet that ran a mix is compared with that same mix, device by device.
    pub fn evidence_of_each(
        &self,
        model: &str,
        previous: &std::collections::BTreeMap<String, String>,
        from: u64,
        to: u64,
    ) -> Result<Evidence, StoreError> {
        let runs = |d: &str, v: &str| previous.get(d).is_some_and(|p| p == v);
        let (requests, errors, latency_us, n) = self.slos.traffic_where(model, from, to, runs)?;
        let (compared, agreed) = self.slos.shadow_where(model, from, to, runs)?;
        let mut by_version: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for (device, version) in previous {
            by_version.entry(version).or_default().push(device.clone());
        }
        let (mut labelled, mut correct) = (0, 0);
        for (version, devices) in by_version {
            let (l, c) = self.labels.correct_on(model, version, &devices, from, to)?;
            labelled += l;
            correct += c;
        }
        Ok(Evidence { requests, errors, latency_us, labelled, correct, compared, agreed, devices: n })
    }

    /// Traffic of every version but `except` on `devices` in `[from, to]`.
    pub fn traffic_except(
        &self,
        model: &str,
        except: &str,
        devices: &[String],
        from: u64,
        to: u64,
    ) -> Result<Traffic, StoreError> {
        let set: BTreeSet<&str> = devices.iter().map(String::as_str).collect();
        let keep = |d: &str, v: &str| set.contains(d) && v != except;
        let (requests, errors, latency_us, _) = self.slos.traffic_where(model, from, to, keep)?;
        let oldest_ms = self.slos.oldest_window_where(model, from, to, keep)?;
        Ok(Traffic { requests, errors, latency_us, oldest_ms })
    }

    /// (labelled, correct) of `version` on `devices` in `[from, to]`.
    pub fn correct_on(
        &self,
        model: &str,
        version: &str,
        devices: &[String],
        from: u64,
        to: u64,
    ) -> Result<(u64, u64), StoreError> {
        self.labels.correct_on(model, version, devices, from, to)
    }
}
