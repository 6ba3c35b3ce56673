//! The rollout state machine: one tick moves every active rollout on — applies a step, waits
//! for its devices, bakes, judges the gates, extends, pauses, rolls back or succeeds.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::bake::{self, BakeDecision};
use super::gates::{self, GateResult};
use super::sends::{revert, send_step};
use super::{
    Incident, OfflinePolicy, Phase, Rollout, RolloutError, Rollouts, Step, TimelineEntry, Writer, actual_of,
};
use crate::base::store::StoreError;
use crate::fleet::desired::Outgoing;
use crate::fleet::devices::DeviceRecord;
use crate::fleet::liveness::Liveness;
use crate::models::registry::Stage;
use crate::ops::deploy::DeployError;
use outpost_shared::protocol::vocab::{LoadState, Slot};

impl Rollouts {
    /// The gates' verdicts for the current bake, on the evidence [`bake::evidence_window`] names.
    fn judge(&self, r: &mut Rollout, now: u64) -> Result<(), RolloutError> {
        let Ok(gates) = r.spec.validate() else { return Ok(()) };
        let step = r.step_at(r.wave);
        let w = bake::evidence_window(step, r.created_ms, now, r.spec.bake_secs);
        let moved: Vec<String> = r.moved.iter().filter(|d| !r.skipped.contains(d)).cloned().collect();
        // The candidate on the moved devices since the rollout began; each target against what
        // it ran before the rollout (a fleet that ran a mix of versions is compared with that
        // mix, not with one of them). Running sums: a tick reads what arrived since the last.
        let (candidate, baseline) = self.evidence.of_rollout(r, &moved, w.same_devices, w.to_ms)?;
        let since = (now.saturating_sub(w.from_ms)) / 1000;
        r.baseline_scope = if w.same_devices {
            format!(
                "{} as the primary on the same {} device(s) in the same {since} s since the rollout began",
                r.baseline_mix_text(),
                r.targets.len()
            )
        } else {
            format!(
                "{} on the {} target(s) from {} s before the rollout began (the devices not yet moved since), \
                 against {} on {} moved device(s) over the rollout's {since} s",
                r.baseline_mix_text(),
                r.targets.len(),
                r.spec.bake_secs,
                r.spec.version,
                moved.len()
            )
        };
        let t = r.spec.thresholds(gates.len());
        r.gates = gates.iter().map(|g| gates::evaluate(g, &candidate, &baseline, t)).collect();
        r.evaluated_ms = Some(now);
        let evaluation = super::records::Evaluation::of(now, r.wave, r.extensions, &r.gates);
        r.remember(evaluation);
        Ok(())
    }

    /// The records of `ids` that are enrolled and not revoked (what a tick reads, instead of
    /// every device of the fleet).
    fn records(&self, ids: &[String]) -> Result<Vec<DeviceRecord>, RolloutError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(d) = self.devices.get(id)?.filter(|d| d.revoked.is_none()) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Rolls the rollout back: every moved device to its previous version, an incident.
    fn roll_back(
        &self,
        r: &mut Rollout,
        reason: String,
        gate: Option<GateResult>,
    ) -> Result<Vec<Outgoing>, RolloutError> {
        let now = self.clock.now_ms();
        let out = revert(&self.steps, r, "rollout-engine")?;
        r.log(now, format!("ROLLED BACK: {reason}; {} device(s) sent back to {}", r.moved.len(), r.baseline));
        r.phase = Phase::RolledBack;
        r.finished_ms = Some(self.clock.now_ms());
        let incident = Incident {
            id: self.repo.next_id("inc")?,
            rollout: r.id.clone(),
            model: r.spec.model.clone(),
            version: r.spec.version.clone(),
            baseline: r.baseline.clone(),
            opened_ms: self.clock.now_ms(),
            reason: reason.clone(),
            gate,
            gates: r.gates.clone(),
            baseline_scope: r.baseline_scope.clone(),
            devices_rolled_back: r.moved.clone(),
            timeline: r.timeline.clone(),
            closed_ms: None,
            closed_by: None,
        };
        self.repo.put_incident(&incident, Writer::Engine)?;
        r.incident = Some(incident.id.clone());
        self.metrics.rollout_rollbacks.with_label_values(&[&r.spec.model]).inc();
        tracing::warn!(
            rollout = r.id,
            incident = incident.id,
            model = r.spec.model,
            version = r.spec.version,
            reason,
            "rollout rolled back"
        );
        let _ = self.deployer.registry().transition(
            &r.spec.model,
            &r.spec.version,
            Stage::Validated,
            "rollout-engine",
            &format!("rolled back by rollout {} ({})", r.id, incident.id),
        );
        Ok(out)
    }

    /// One step of every active rollout (blocking); returns the desired states to publish.
    pub fn tick(&self) -> Result<Vec<Outgoing>, RolloutError> {
        let _g = self.guard();
        if self.fence.as_ref().is_some_and(|(f, _)| f.term() == 0) {
            // Another replica holds the `rollouts` lease (or none does yet): it steps them. The
            // running sums are dropped, so a lease taken later starts them from the store.
            self.evidence.keep_only(&BTreeSet::new());
            return Ok(Vec::new());
        }
        // The lease as the database has it, not only as this process last heard: a replica
        // paused past its lease finds out here, before it acts (each write checks again).
        match self.repo.check_lease() {
            Ok(()) => {}
            Err(StoreError::Fenced(f)) => {
                tracing::warn!(%f, "the rollouts lease is another replica's: not stepping");
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        }
        let mut out = Vec::new();
        let mut active = 0;
        let mut ids = BTreeSet::new();
        for mut r in self.repo.active()? {
            active += 1;
            ids.insert(r.id.clone());
            // Whatever the phase: a rollout applying or paused for long must not fall behind.
            self.evidence.keep_up(&r.id, self.clock.now_ms())?;
            let before = r.clone();
            self.note_takeover(&mut r);
            let stepped = self.step(&mut r, &mut out).and_then(|()| {
                if r != before {
                    self.repo.put(&mut r, Writer::Engine)?;
                    self.metrics.rollout_updates.inc();
                }
                Ok(())
            });
            match stepped {
                Ok(()) => {}
                // An operator's command (on another replica) stored it meanwhile: the next tick
                // reads it again. What this step sent stays sent (sending is idempotent).
                Err(RolloutError::Store(StoreError::Stale { .. })) => {
                    tracing::debug!(rollout = r.id, "changed meanwhile: stepped again at the next tick");
                }
                Err(
                    RolloutError::Store(StoreError::Fenced(f))
                    | RolloutError::Deploy(DeployError::Store(StoreError::Fenced(f))),
                ) => {
                    tracing::warn!(rollout = r.id, %f, "the rollouts lease is another replica's: this engine stops");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        self.metrics.rollouts_active.set(active);
        self.evidence.keep_only(&ids);
        self.watches.keep_only(&ids);
        Ok(out)
    }

    /// On PostgreSQL: the first step of `r` in this replica's lease term says so in its
    /// timeline — a takeover when another term stepped it before.
    fn note_takeover(&self, r: &mut Rollout) {
        let Some((fence, replica)) = &self.fence else { return };
        let term = fence.term();
        if term == 0 || r.engine_term == Some(term) {
            return;
        }
        let message = match r.engine_term {
            None => format!("stepped by replica {replica} (rollouts lease term {term})"),
            Some(before) => {
                format!("taken over by replica {replica} (rollouts lease term {term}, after term {before})")
            }
        };
        tracing::info!(rollout = r.id, replica, term, "{message}");
        r.engine_term = Some(term);
        r.timeline.push(TimelineEntry { at_ms: self.clock.now_ms(), message });
    }

    /// Moves `r` on by what is due now; what it sends goes to `out` as it is sent.
    fn step(&self, r: &mut Rollout, out: &mut Vec<Outgoing>) -> Result<(), RolloutError> {
        let now = self.clock.now_ms();
        if matches!(r.phase, Phase::Applying | Phase::Baking)
            && let Some((device, message)) = self.watches.tripped(&self.devices, r)?
        {
            let reason =
                format!("device {device}'s watchdog switched {} back on its own ({message})", r.spec.version);
            out.extend(self.roll_back(r, reason, None)?);
            return Ok(());
        }
        match r.phase {
            Phase::Paused | Phase::Succeeded | Phase::RolledBack | Phase::Aborted => {}
            Phase::Applying => {
                let wave: Vec<String> = r.wave_devices(r.wave).to_vec();
                let step = r.step_at(r.wave);
                let moved: HashSet<&String> = r.moved.iter().collect();
                let new: Vec<String> = wave.iter().filter(|d| !moved.contains(d)).cloned().collect();
                if !new.is_empty() {
                    r.moved.extend(new);
                    // Written first: a restart after this point re-sends, never forgets a device.
                    self.repo.put(r, Writer::Engine)?;
                }
                let sent = send_step(&self.steps, &wave, &r.spec.model, &r.spec.version, step)?;
                if !sent.is_empty() {
                    let what = match step {
                        Step::Wave(_) | Step::Switch => "as the primary version".to_owned(),
                        Step::Canary(p) => format!("as a canary answering {p}% of requests"),
                        Step::Standby => "as a standby".to_owned(),
                        Step::Shadow => "as a shadow answering copies of requests".to_owned(),
                    };
                    r.log(
                        now,
                        format!(
                            "{}: sending {} {what} to {} device(s)",
                            r.label(),
                            r.spec.version,
                            sent.len()
                        ),
                    );
                    out.extend(sent);
                }
                let devices: HashMap<String, DeviceRecord> =
                    self.records(&wave)?.into_iter().map(|d| (d.id.clone(), d)).collect();
                let skipped: HashSet<String> = r.skipped.iter().cloned().collect();
                let mut waiting = Vec::new();
                for id in &wave {
                    if skipped.contains(id) {
                        continue;
                    }
                    let d = devices.get(id);
                    let actual = actual_of(d, &r.spec.model);
                    let slot = match step {
                        Step::Canary(_) => Slot::Canary,
                        Step::Standby => Slot::Standby,
                        Step::Shadow => Slot::Shadow,
                        Step::Wave(_) | Step::Switch => Slot::Primary,
                    };
                    let running = d.is_some_and(|d| {
                        d.models.iter().any(|m| {
                            m.name == r.spec.model
                                && m.version == r.spec.version
                                && m.slot == slot
                                && m.state == LoadState::Ready
                        })
                    });
                    if running {
                        continue;
                    }
                    if let Some(m) =
                        actual.filter(|m| m.version == r.spec.version && m.state == LoadState::Failed)
                    {
                        let why = m.reason.clone().unwrap_or_else(|| "no reason given".into());
                        out.extend(self.roll_back(
                            r,
                            format!("device {id} failed to run {}: {why}", r.spec.version),
                            None,
                        )?);
                        return Ok(());
                    }
                    let live = d.map_or(Liveness::NeverSeen, |d| Liveness::of(d, &self.fleet, now));
                    if live != Liveness::Online {
                        match r.spec.offline {
                            OfflinePolicy::Wait => {}
                            OfflinePolicy::Skip => {
                                r.skipped.push(id.clone());
                                r.log(
                                    now,
                                    format!(
                                        "{}: skipping {id} ({live}); it gets {} when it returns",
                                        r.label(),
                                        r.spec.version
                                    ),
                                );
                                continue;
                            }
                            OfflinePolicy::Fail => {
                                let reason =
                                    format!("device {id} is {live} during {} (policy: fail)", r.label());
                                out.extend(self.roll_back(r, reason, None)?);
                                return Ok(());
                            }
                        }
                    }
                    waiting.push(id.clone());
                }
                if waiting.is_empty() {
                    if r.promoted {
                        self.succeed(r);
                    } else if step == Step::Standby {
                        r.log(now, format!(
                            "{}: every target runs {} as a standby, validated; switching them all at once",
                            r.label(),
                            r.spec.version
                        ));
                        r.wave += 1;
                        r.wave_started_ms = now;
                    } else {
                        r.phase = Phase::Baking;
                        r.bake_started_ms = Some(now);
                        r.bake_until_ms = Some(now + r.spec.bake_secs * 1000);
                        r.extensions = 0;
                        r.log(
                            now,
                            format!(
                                "{}: {} device(s) run {}; baking {} s",
                                r.label(),
                                wave.len() - r.skipped.iter().filter(|s| wave.contains(s)).count(),
                                r.spec.version,
                                r.spec.bake_secs
                            ),
                        );
                    }
                } else if now.saturating_sub(r.wave_started_ms) > r.spec.apply_timeout_secs * 1000
                    && waiting.iter().any(|id| {
                        devices.get(id).is_some_and(|d| Liveness::of(d, &self.fleet, now) == Liveness::Online)
                    })
                {
                    // Online yet not running it in time (quiet devices are the offline policy's).
                    let reason = format!(
                        "{}: {} device(s) did not report {} ready within {} s: {}",
                        r.label(),
                        waiting.len(),
                        r.spec.version,
                        r.spec.apply_timeout_secs,
                        waiting.join(", ")
                    );
                    out.extend(self.roll_back(r, reason, None)?);
                }
            }
            Phase::Baking => {
                self.judge(r, now)?;
                let decision = bake::bake_decision(
                    &r.gates,
                    now,
                    r.bake_until_ms.unwrap_or(0),
                    r.extensions,
                    r.spec.max_extensions,
                );
                match decision {
                    BakeDecision::RollBack(failed) => {
                        let reason = format!(
                            "gate `{}` failed at {}: {} (baseline: {})",
                            failed.gate,
                            r.label(),
                            failed.detail,
                            r.baseline_scope
                        );
                        out.extend(self.roll_back(r, reason, Some(failed))?);
                    }
                    BakeDecision::Continue => {}
                    BakeDecision::Passed => {
                        let summary: Vec<String> =
                            r.gates.iter().map(|g| format!("{} pass ({})", g.gate, g.detail)).collect();
                        r.log(
                            now,
                            format!(
                                "{}: gates passed against {}: {}",
                                r.label(),
                                r.baseline_scope,
                                summary.join("; ")
                            ),
                        );
                        if r.step_at(r.wave) == Step::Shadow {
                            // Evidence gathered; the shadow goes, nothing switched.
                            out.extend(revert(&self.steps, r, "rollout-engine")?);
                            r.phase = Phase::Succeeded;
                            r.finished_ms = Some(now);
                            r.log(now, format!(
                                "succeeded: {}@{} matched its primary in shadow; the shadow is removed and nothing \
                                 switched — roll it out with `canary` or `blue-green`",
                                r.spec.model, r.spec.version
                            ));
                        } else if r.wave + 1 == r.steps() {
                            self.succeed(r);
                        } else {
                            r.wave += 1;
                            r.phase = Phase::Applying;
                            r.wave_started_ms = now;
                            r.bake_started_ms = None;
                            r.bake_until_ms = None;
                        }
                    }
                    BakeDecision::Extend(why) => {
                        r.extensions += 1;
                        r.bake_until_ms = Some(now + r.spec.bake_secs * 1000);
                        r.log(
                            now,
                            format!(
                                "{}: INCONCLUSIVE ({}); bake extended {}/{}",
                                r.label(),
                                why.join("; "),
                                r.extensions,
                                r.spec.max_extensions
                            ),
                        );
                    }
                    BakeDecision::Pause(why) => {
                        r.phase = Phase::Paused;
                        let reason =
                            format!("inconclusive after {} extension(s): {}", r.extensions, why.join("; "));
                        r.log(now, format!("{}: PAUSED, {reason}", r.label()));
                        r.paused_reason = Some(reason);
                    }
                }
            }
        }
        Ok(())
    }

    fn succeed(&self, r: &mut Rollout) {
        let now = self.clock.now_ms();
        r.phase = Phase::Succeeded;
        r.finished_ms = Some(self.clock.now_ms());
        // Production is the fleet's version: while devices outside this rollout still run
        // another version of the model, it stays as it is unless the spec says `promote`.
        let fleet: BTreeSet<String> =
            self.devices.all().map(|all| all.into_iter().map(|d| d.id).collect()).unwrap_or_default();
        let (mut running, mut elsewhere) = (0usize, 0usize);
        let desired = self.deployer.desired().all().unwrap_or_else(|e| {
            tracing::error!(error = %e, rollout = %r.id, "desired states unreadable: counting none as running elsewhere");
            Vec::new()
        });
        for (device, record) in desired {
            let Some(model) = record.models.get(&r.spec.model) else { continue };
            if fleet.contains(&device) {
                running += 1;
                if model.version != r.spec.version && !r.targets.contains(&device) {
                    elsewhere += 1;
                }
            }
        }
        let partial = elsewhere > 0;
        let scope = format!(
            "{} of {running} devices running {} have {}",
            running - elsewhere,
            r.spec.model,
            r.spec.version
        );
        if partial && !r.spec.promote {
            let stage = self
                .deployer
                .registry()
                .get(&r.spec.model, &r.spec.version)
                .map(|rec| rec.stage.as_str().to_owned())
                .unwrap_or_else(|_| "as it was".into());
            r.log(
                now,
                format!(
                    "succeeded (partial: {scope}): {}@{} stays {stage} and the production version is unchanged; roll out to the rest, or start with --promote to make a partial rollout production",
                    r.spec.model, r.spec.version
                ),
            );
            return;
        }
        let note = format!("rollout {}", r.id);
        match self.deployer.registry().transition(
            &r.spec.model,
            &r.spec.version,
            Stage::Production,
            "rollout-engine",
            &note,
        ) {
            Ok(_) if partial => r.log(
                now,
                format!(
                    "succeeded (partial: {scope}, promoted as asked): {}@{} is production",
                    r.spec.model, r.spec.version
                ),
            ),
            Ok(_) => r.log(now, format!("succeeded: {}@{} is production", r.spec.model, r.spec.version)),
            Err(e) => r.log(now, format!("succeeded, but the registry refused the stage change: {e}")),
        }
    }
}
