//! The watchdog: a version the coordinator's desired state switched to is on *probation* for
//! its policy's `probation_secs` (the policy travels in the signed desired state, see
//! [`WatchdogPolicy`]). While it is, the agent itself — with or without a coordinator to ask —
//! switches back to the version before when:
//! - the agent keeps crashing: every start finds whether the last run on the version ended
//!   without a clean exit ([`ModelStore::boot`]); one crash more than `max_crashes` and the
//!   agent starts on the previous version, before anything loads;
//! - the version fails more than `max_error_permille` of its requests (failures that are the
//!   model's or the agent's, not a client's bad input) once `min_requests` were served;
//! - its p99 latency exceeds `max_p99_ms` (when set) once `min_requests` were served.
//!
//! A version that fails validation never serves in the first place (the reconciler keeps the
//! old one). A switch back is logged, counted (`outpost_agent_watchdog_rollbacks_total`) and
//! reported as a `WatchdogRolledBack` event, which waits in the outbox while the link is down.
//! A probation that runs its time out ends quietly: the version is kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_shared::histogram::LogHistogram;
use outpost_shared::protocol::messages::{EventKind, WatchdogPolicy};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::model_store::{BootAction, ModelStore, Probation};
use crate::telemetry::Reporter;

/// How often probations are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What one watched version did since its probation began (in this run of the agent).
#[derive(Debug, Clone)]
struct Watch {
    model: String,
    probation: Probation,
    requests: u64,
    errors: u64,
    latency_us: LogHistogram,
}

/// Why a version on probation must go, if it must.
pub fn verdict(
    policy: &WatchdogPolicy,
    requests: u64,
    errors: u64,
    latency_us: &LogHistogram,
) -> Option<String> {
    if requests < u64::from(policy.min_requests) {
        return None;
    }
    if errors * 1000 > u64::from(policy.max_error_permille) * requests {
        return Some(format!(
            "{errors} of {requests} requests failed ({:.1}%), over the policy's {:.1}%",
            errors as f64 * 100.0 / requests as f64,
            f64::from(policy.max_error_permille) / 10.0
        ));
    }
    if policy.max_p99_ms > 0
        && let Some(p99) = latency_us.quantile(0.99).map(|us| us / 1000.0)
        && p99 > f64::from(policy.max_p99_ms)
    {
        return Some(format!(
            "p99 latency {p99:.1} ms over {requests} requests, over the policy's {} ms",
            policy.max_p99_ms
        ));
    }
    None
}

/// The running watchdog.
pub struct Watchdog {
    store: ModelStore,
    watched: Mutex<Vec<Watch>>,
    /// Fast path for every request: false while nothing is on probation.
    any: AtomicBool,
    reporter: Option<Arc<Reporter>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog").finish_non_exhaustive()
    }
}

impl Watchdog {
    pub fn new(store: ModelStore, reporter: Option<Arc<Reporter>>, metrics: Arc<Metrics>) -> Watchdog {
        Watchdog { store, watched: Mutex::new(Vec::new()), any: AtomicBool::new(false), reporter, metrics }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watch>> {
        self.watched.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// At start-up, before the reconciler loads anything: counts crashes, switches back the
    /// versions that crashed too often (blocking).
    pub fn boot(&self, now_ms: u64) {
        let actions = match self.store.boot(now_ms) {
            Ok(actions) => actions,
            Err(e) => {
                tracing::error!(error = %e, "watchdog: cannot read the model store at start-up");
                return;
            }
        };
        for action in actions {
            match action {
                BootAction::Crashed { name, version, crashes, allowed } => {
                    tracing::warn!(model = %name, %version, crashes, allowed, "watchdog: the last run on this version did not exit cleanly");
                }
                BootAction::RolledBack { name, from, to, crashes } => {
                    let reason = format!("the agent crashed {crashes} times while it ran {from}");
                    self.rolled_back(&name, &from, &to, &reason);
                }
            }
        }
    }

    fn rolled_back(&self, model: &str, from: &str, to: &str, reason: &str) {
        tracing::error!(model, from, to, reason, "watchdog: switched back to the previous version");
        self.metrics.watchdog_rollbacks.with_label_values(&[model]).inc();
        if let Some(reporter) = &self.reporter {
            reporter.event(
                EventKind::WatchdogReverted {
                    model: model.to_owned(),
                    from: from.to_owned(),
                    to: to.to_owned(),
                    reason: reason.to_owned(),
                },
                format!("watchdog: model `{model}` {from} -> {to}: {reason}"),
            );
        }
    }

    /// Counts one answered request (cheap while nothing is on probation).
    pub fn observe(&self, model: &str, version: &str, failed: bool, latency_us: f64) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        let mut watched = self.lock();
        if let Some(w) = watched.iter_mut().find(|w| w.model == model && w.probation.version == version) {
            w.requests += 1;
            w.errors += u64::from(failed);
            w.latency_us.record(latency_us);
        }
    }

    /// One pass (blocking): follows the store's probations, ends those whose time is up, and
    /// switches back a version that breached its policy.
    pub fn check(&self, now_ms: u64) {
        let state = match self.store.state() {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(error = %e, "watchdog: cannot read the model store");
                return;
            }
        };
        let current: Vec<(String, Probation)> = state
            .models
            .iter()
            .filter_map(|(name, m)| {
                m.probation.clone().filter(|p| p.version == m.active).map(|p| (name.clone(), p))
            })
            .collect();
        let mut decisions = Vec::new();
        {
            let mut watched = self.lock();
            watched.retain(|w| current.iter().any(|(n, p)| *n == w.model && *p == w.probation));
            for (name, p) in &current {
                if !watched.iter().any(|w| w.model == *name && w.probation == *p) {
                    tracing::info!(model = %name, version = %p.version, previous = %p.previous, secs = p.policy.probation_secs, "watchdog: version on probation");
                    watched.push(Watch {
                        model: name.clone(),
                        probation: p.clone(),
                        requests: 0,
                        errors: 0,
                        latency_us: LogHistogram::default(),
                    });
                }
            }
            for w in watched.iter() {
                let over = now_ms.saturating_sub(w.probation.since_ms)
                    >= u64::from(w.probation.policy.probation_secs) * 1000;
                let breach = verdict(&w.probation.policy, w.requests, w.errors, &w.latency_us);
                if over || breach.is_some() {
                    decisions.push((w.model.clone(), w.probation.version.clone(), breach));
                }
            }
            self.any.store(!watched.is_empty(), Ordering::Relaxed);
        }
        for (model, version, breach) in decisions {
            match self.store.end_probation(&model, &version, breach.is_some()) {
                Ok(Some(back)) => {
                    self.rolled_back(&model, &back.from, &back.to, breach.as_deref().unwrap_or(""))
                }
                Ok(None) => tracing::info!(model, version, "watchdog: probation over, version kept"),
                Err(e) => tracing::error!(model, version, error = %e, "watchdog: cannot end the probation"),
            }
        }
    }

    /// Checks every [`CHECK_EVERY`] until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.changed() => return,
            }
            let this = Arc::clone(&self);
            let _ =
                tokio::task::spawn_blocking(move || this.check(outpost_shared::endpoints::now_ms())).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(ms: f64, n: u64) -> LogHistogram {
        let mut h = LogHistogram::default();
        h.record_n(ms * 1000.0, n);
        h
    }

    #[test]
    fn breaches_need_enough_requests_and_name_the_numbers() {
        let policy = WatchdogPolicy {
            min_requests: 50,
            max_error_permille: 50,
            max_p99_ms: 100,
            ..WatchdogPolicy::default()
        };
        assert_eq!(verdict(&policy, 49, 49, &latency(1.0, 49)), None, "too few requests to judge");
        assert_eq!(verdict(&policy, 100, 5, &latency(1.0, 100)), None, "5% is allowed");
        let why = verdict(&policy, 100, 6, &latency(1.0, 100)).unwrap();
        assert!(why.contains("6 of 100 requests failed (6.0%), over the policy's 5.0%"), "{why}");
        let why = verdict(&policy, 100, 0, &latency(150.0, 100)).unwrap();
        assert!(why.contains("p99 latency") && why.contains("100 ms"), "{why}");
        let no_latency_limit = WatchdogPolicy { max_p99_ms: 0, ..policy };
        assert_eq!(verdict(&no_latency_limit, 100, 0, &latency(150.0, 100)), None);
    }
}
