//! Where a rollout's evidence comes from: the fleet's traffic and labels per (device, version)
//! as the monitoring floor stores them, summed over a window — by scanning the window
//! ([`EvidenceSource::evidence`], for plans and as the reference), or as running sums per active
//! rollout ([`EvidenceSource::of_rollout`], what the engine's ticks read; see [`super::running`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use super::gates::Evidence;
use super::records::Rollout;
use super::running::Running;
use crate::base::store::{Store, StoreError};
use crate::monitoring::follow::FollowError;
use crate::monitoring::quality::Labels;
use crate::monitoring::slo::Slos;

/// Reads evidence of a version on a set of devices.
#[derive(Clone)]
pub struct EvidenceSource {
    /// The sled store whose feed the running sums follow (`None` on PostgreSQL, where they
    /// follow rows by transaction id).
    store: Option<Store>,
    slos: Slos,
    labels: Labels,
    /// Running sums per active rollout id.
    running: Arc<Mutex<HashMap<String, Running>>>,
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
        Ok(EvidenceSource {
            store: Some(store.clone()),
            slos: Slos::open(store)?,
            labels: Labels::open(store)?,
            running: Default::default(),
        })
    }

    /// The evidence on PostgreSQL, whichever replica stored it.
    pub fn open_postgres(store: &crate::base::pg::store::PgStore) -> EvidenceSource {
        EvidenceSource {
            store: None,
            slos: Slos::open_postgres(store),
            labels: Labels::open_postgres(store),
            running: Default::default(),
        }
    }

    /// (candidate on `moved`, baseline) of rollout `r` at `now`, from its running sums (read
    /// once at the rollout's first look in this process, then only what arrives). `same_devices`
    /// as in [`super::bake::EvidenceWindow`]. Equals [`EvidenceSource::evidence`] of the candidate
    /// from `r.created_ms` and [`EvidenceSource::evidence_of_each`] of the baseline.
    pub fn of_rollout(
        &self,
        r: &Rollout,
        moved: &[String],
        same_devices: bool,
        now: u64,
    ) -> Result<(Evidence, Evidence), StoreError> {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        catch_up(&mut running, &r.id, now)?;
        if let Some(sums) = running.get_mut(&r.id) {
            return Ok(sums.evidence(moved, same_devices));
        }
        let started = std::time::Instant::now();
        let sums = match Running::start(self.store.as_ref(), &self.slos, &self.labels, r, now) {
            Ok(sums) => sums,
            Err(FollowError::Store(e)) => return Err(e),
            Err(FollowError::Overflowed(e)) => {
                return Err(StoreError::Corrupt { key: format!("rollouts/{}", r.id), detail: e.to_string() });
            }
        };
        tracing::info!(
            rollout = %r.id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "read the rollout's evidence so far; from now on only what arrives is added"
        );
        let evidence =
            running.entry(r.id.clone()).insert_entry(sums).into_mut().evidence(moved, same_devices);
        Ok(evidence)
    }

    /// Folds what arrived into rollout `id`'s running sums, if it has any (each tick, so a
    /// rollout that is not judging — applying a wave, paused — does not fall behind).
    pub fn keep_up(&self, id: &str, now: u64) -> Result<(), StoreError> {
        catch_up(&mut self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner), id, now)
    }

    /// Drops the running sums of rollouts not in `active`.
    pub fn keep_only(&self, active: &BTreeSet<String>) {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|id, _| active.contains(id));
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

/// Folds what arrived into rollout `id`'s running sums, if it has any; sums that fell behind are
/// dropped (the next look reads the rollout again).
fn catch_up(running: &mut HashMap<String, Running>, id: &str, now: u64) -> Result<(), StoreError> {
    let Some(sums) = running.get_mut(id) else { return Ok(()) };
    match sums.read(now) {
        Ok(()) => Ok(()),
        Err(FollowError::Store(e)) => Err(e),
        Err(FollowError::Overflowed(e)) => {
            tracing::warn!(rollout = %id, error = %e, "rollout evidence fell behind; it is read again at the next look");
            running.remove(id);
            Ok(())
        }
    }
}
