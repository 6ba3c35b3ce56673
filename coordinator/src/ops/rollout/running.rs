//! A rollout's evidence kept as running sums. The first look at a rollout reads its model's
//! report windows, shadow windows and labels once (from one bake before it began); every later
//! look folds in only what was stored since ([`crate::monitoring::follow`]). So a tick costs the
//! records that arrived since the last one plus one sum per moved device, instead of a scan of
//! everything the fleet reported over the rollout's span — which grows with fleet size × time
//! and, at 10,000 devices, took seconds per tick.
//!
//! The sums are what [`EvidenceSource::evidence`](super::evidence::EvidenceSource::evidence)
//! and [`evidence_of_each`](super::evidence::EvidenceSource::evidence_of_each) read by scanning
//! the same window (the unit tests hold them to it): the candidate is the rollout's version on
//! each moved device since the rollout began, the baseline each target's previous version since
//! one bake before (waves) or since the rollout began (canary and shadow steps). A record about
//! a time after the look (a device clock running ahead) waits until its time has come, as the
//! scan would leave it out until then. The sums live in memory: a restarted coordinator reads
//! once again.

use std::collections::{HashMap, HashSet};

use outpost_shared::histogram::LogHistogram;

use super::gates::Evidence;
use super::records::Rollout;
use crate::base::store::{Store, StoreError};
use crate::monitoring::follow::{FollowError, Follower, Record};
use crate::monitoring::quality::{Labels, StoredLabel};
use crate::monitoring::slo::Slos;

/// Sums of one side's records.
#[derive(Debug, Clone, Default)]
struct Sums {
    windows: u64,
    requests: u64,
    errors: u64,
    latency_us: LogHistogram,
    /// Signed: a replaced label is taken away.
    labelled: i64,
    correct: i64,
    compared: u64,
    agreed: u64,
}

impl Sums {
    fn add(&mut self, fact: &Fact) {
        match fact {
            Fact::Traffic { requests, errors, latency_us } => {
                self.windows += 1;
                self.requests += requests;
                self.errors += errors;
                let _ = self.latency_us.merge(latency_us);
            }
            Fact::Shadow { compared, agreed } => {
                self.compared += compared;
                self.agreed += agreed;
            }
            Fact::Label { right, sign } => {
                self.labelled += sign;
                self.correct += sign * i64::from(*right);
            }
        }
    }

    fn merge(&mut self, other: &Sums) {
        self.windows += other.windows;
        self.requests += other.requests;
        self.errors += other.errors;
        let _ = self.latency_us.merge(&other.latency_us);
        self.labelled += other.labelled;
        self.correct += other.correct;
        self.compared += other.compared;
        self.agreed += other.agreed;
    }

    fn evidence(&self, devices: usize) -> Evidence {
        Evidence {
            requests: self.requests,
            errors: self.errors,
            latency_us: self.latency_us.clone(),
            labelled: self.labelled.max(0) as u64,
            correct: self.correct.max(0) as u64,
            compared: self.compared,
            agreed: self.agreed,
            devices,
        }
    }
}

/// What one record adds to a side.
#[derive(Debug, Clone)]
enum Fact {
    Traffic {
        requests: u64,
        errors: u64,
        latency_us: LogHistogram,
    },
    Shadow {
        compared: u64,
        agreed: u64,
    },
    /// A labelled prediction with a predicted label; `sign` −1 takes a replaced one away.
    Label {
        right: bool,
        sign: i64,
    },
}

/// One fact about `device` running `version`, at `at_ms` (window end, or prediction time).
#[derive(Debug, Clone)]
struct Dated {
    device: String,
    version: String,
    at_ms: u64,
    fact: Fact,
}

/// A rollout's evidence as running sums.
#[derive(Debug)]
pub struct Running {
    follower: Follower,
    version: String,
    targets: HashSet<String>,
    previous: HashMap<String, String>,
    created_ms: u64,
    from_ms: u64,
    /// Per target: the rollout's version since the rollout began.
    candidate: HashMap<String, Sums>,
    /// The sum of `candidate` over `counted` (the moved devices of the last look), and how many
    /// of them have report windows: kept as records arrive, so a look merges only new devices.
    candidate_total: Sums,
    counted: HashSet<String>,
    counted_with_windows: usize,
    /// Each target's previous version: before the rollout began `[0]`, since `[1]`.
    baseline: [Sums; 2],
    /// Per target, the baseline parts its report windows are in (bit 0 before, bit 1 since).
    baseline_devices: HashMap<String, u8>,
    /// Facts about times after the newest look, folded in when their time comes.
    pending: Vec<Dated>,
}

impl Running {
    /// Reads what `r`'s evidence needs that is stored up to `now`, from one bake before it began.
    pub fn start(
        store: Option<&Store>,
        slos: &Slos,
        labels: &Labels,
        r: &Rollout,
        now: u64,
    ) -> Result<Running, FollowError> {
        let from_ms = r.created_ms.saturating_sub(r.spec.bake_secs.saturating_mul(1000));
        let mut read = Vec::new();
        let follower = match (slos.postgres(), store) {
            (Some(pg), _) => {
                Follower::start_postgres(pg, &r.spec.model, from_ms, |record| read.push(record))?
            }
            (None, Some(store)) => {
                Follower::start(store, slos, labels, &r.spec.model, from_ms, |record| read.push(record))?
            }
            (None, None) => {
                return Err(StoreError::NotOnPostgres("following sled records without their store").into());
            }
        };
        let mut running = Running {
            follower,
            version: r.spec.version.clone(),
            targets: r.targets.iter().cloned().collect(),
            previous: r.previous_versions().into_iter().collect(),
            created_ms: r.created_ms,
            from_ms,
            candidate: HashMap::new(),
            candidate_total: Sums::default(),
            counted: HashSet::new(),
            counted_with_windows: 0,
            baseline: Default::default(),
            baseline_devices: HashMap::new(),
            pending: Vec::new(),
        };
        for record in read {
            running.record(record, now);
        }
        Ok(running)
    }

    /// Folds in what was stored since the last look, and what has come due by `now`.
    pub fn read(&mut self, now: u64) -> Result<(), FollowError> {
        let mut new = Vec::new();
        self.follower.changes(|record| new.push(record))?;
        for record in new {
            self.record(record, now);
        }
        let (due, later): (Vec<Dated>, Vec<Dated>) =
            std::mem::take(&mut self.pending).into_iter().partition(|d| d.at_ms <= now);
        self.pending = later;
        for d in due {
            self.fold(d);
        }
        Ok(())
    }

    /// (candidate on `moved`, baseline): what the scan of the same window would read.
    /// `same_devices`: the baseline counts only since the rollout began (canary, shadow steps).
    pub fn evidence(&mut self, moved: &[String], same_devices: bool) -> (Evidence, Evidence) {
        let wanted: HashSet<&String> = moved.iter().collect();
        if self.counted.iter().any(|d| !wanted.contains(d)) {
            // A device left the set (skipped): sum again.
            self.candidate_total = Sums::default();
            self.counted.clear();
            self.counted_with_windows = 0;
        }
        for d in moved {
            if self.counted.insert(d.clone())
                && let Some(s) = self.candidate.get(d)
            {
                self.candidate_total.merge(s);
                self.counted_with_windows += usize::from(s.windows > 0);
            }
        }
        let mask = if same_devices { 0b10 } else { 0b11 };
        let mut baseline = self.baseline[1].clone();
        if !same_devices {
            baseline.merge(&self.baseline[0]);
        }
        let baseline_devices = self.baseline_devices.values().filter(|b| *b & mask != 0).count();
        (self.candidate_total.evidence(self.counted_with_windows), baseline.evidence(baseline_devices))
    }

    fn record(&mut self, record: Record, now: u64) {
        let dated = |device: &str, version: &str, at_ms: u64, fact: Fact| Dated {
            device: device.to_owned(),
            version: version.to_owned(),
            at_ms,
            fact,
        };
        let facts = match record {
            Record::Traffic { device, version, end_ms, window } => vec![dated(
                &device,
                &version,
                end_ms,
                Fact::Traffic {
                    requests: window.requests,
                    errors: window.errors,
                    latency_us: window.latency_us,
                },
            )],
            Record::Shadow { device, version, end_ms, compared, agreed } => {
                vec![dated(&device, &version, end_ms, Fact::Shadow { compared, agreed })]
            }
            Record::Label { device, label, replaced, .. } => {
                let fact = |l: &StoredLabel, sign| {
                    l.predicted.map(|p| {
                        dated(
                            &device,
                            &l.version,
                            l.predicted_at_ms,
                            Fact::Label { right: p == l.label, sign },
                        )
                    })
                };
                [fact(&label, 1), replaced.as_ref().and_then(|r| fact(r, -1))].into_iter().flatten().collect()
            }
        };
        for d in facts {
            if d.at_ms > now {
                self.pending.push(d);
            } else {
                self.fold(d);
            }
        }
    }

    fn fold(&mut self, d: Dated) {
        if d.at_ms >= self.created_ms && d.version == self.version && self.targets.contains(&d.device) {
            let sums = self.candidate.entry(d.device.clone()).or_default();
            let first_window = sums.windows == 0;
            sums.add(&d.fact);
            if self.counted.contains(&d.device) {
                self.candidate_total.add(&d.fact);
                self.counted_with_windows += usize::from(first_window && sums.windows > 0);
            }
        }
        if d.at_ms >= self.from_ms && self.previous.get(&d.device) == Some(&d.version) {
            let part = usize::from(d.at_ms >= self.created_ms);
            self.baseline[part].add(&d.fact);
            if matches!(d.fact, Fact::Traffic { .. }) {
                *self.baseline_devices.entry(d.device).or_default() |= 1 << part;
            }
        }
    }
}
