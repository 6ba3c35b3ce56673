//! Deploying: the one way a model version reaches devices' desired states.
//!
//! The API's `deploy` and `rollback`, every rollout step and revert, and the retraining loop's
//! canary all go through a [`Deployer`]: it checks the version may be deployed, picks the target
//! devices, changes their stored desired states (only those that say otherwise), seals each
//! changed state with the coordinator's key and hands it to the broker link, which publishes it
//! retained. The store work runs on the blocking pool ([`Deployer::deploy`]); the engine's own
//! calls ([`Deployer::set_primary`], [`Deployer::set_candidate`], [`Deployer::restore`]) are
//! blocking and return what to publish, for the engine to send after it has written its state.

use std::collections::BTreeMap;
use std::sync::Arc;

use outpost_shared::protocol::messages::{Candidate, DesiredModel, SlotMode, WatchdogPolicy};
use serde::{Deserialize, Serialize};

use crate::base::store::StoreError;
use crate::fleet::ca::Authority;
use crate::fleet::desired::{Desired, Outgoing, matches};
use crate::fleet::devices::Devices;
use crate::models::registry::{Registry, RegistryError, Stage};

/// Why a deploy was refused, in the operator's terms.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{version} cannot be deployed: {why}")]
    NotDeployable { version: String, why: String },
    #[error("no device `{0}` (or it was revoked)")]
    UnknownDevice(String),
    #[error("the selector matches no enrolled device")]
    NoTargets,
    #[error("a canary takes 1 to 99 percent of the requests, not {0}")]
    CanaryPercent(u8),
    #[error("device {device} runs no version of `{model}` yet: deploy a primary version first")]
    NoPrimary { device: String, model: String },
    #[error("device {device} already runs {version} as its primary version")]
    AlreadyPrimary { device: String, version: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the deploy task stopped before it finished: {0}")]
    Interrupted(String),
}

/// What to deploy where (the body of `POST /api/v1/deploy`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub model: String,
    pub version: String,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub devices: Vec<String>,
    /// Deploy as the candidate beside the primary (`{"canary": {"percent": 10}}` or
    /// `"standby"`) instead of as the primary.
    #[serde(default)]
    pub slot: Option<SlotMode>,
}

/// What a deploy did.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeployResponse {
    pub model: String,
    pub version: String,
    pub devices: Vec<String>,
    pub stage: Stage,
}

/// The deploy service (cheap to clone).
#[derive(Clone)]
pub struct Deployer {
    registry: Registry,
    devices: Devices,
    desired: Desired,
    authority: Arc<Authority>,
    outgoing: tokio::sync::mpsc::Sender<Outgoing>,
    watchdog: WatchdogPolicy,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer").finish_non_exhaustive()
    }
}

impl Deployer {
    pub fn new(
        registry: Registry,
        devices: Devices,
        desired: Desired,
        authority: Arc<Authority>,
        outgoing: tokio::sync::mpsc::Sender<Outgoing>,
        watchdog: WatchdogPolicy,
    ) -> Deployer {
        Deployer { registry, devices, desired, authority, outgoing, watchdog }
    }

    /// This deployer for an engine under `fence`'s lease: every desired state it changes
    /// checks the term in its transaction (on PostgreSQL), so a deposed leader sends nothing late.
    pub fn fenced(&self, fence: Option<crate::base::pg::store::Fence>) -> Deployer {
        Deployer { desired: self.desired.fenced(fence), ..self.clone() }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Deploys `request` for `by` and publishes the changed desired states; returns what was
    /// done and a one-line detail for the audit log.
    pub async fn deploy(
        &self,
        request: &DeployRequest,
        by: &str,
    ) -> Result<(DeployResponse, String), DeployError> {
        let (this, request2, by2) = (self.clone(), request.clone(), by.to_owned());
        let (response, detail, out) = tokio::task::spawn_blocking(move || this.apply(&request2, &by2))
            .await
            .map_err(|e| DeployError::Interrupted(e.to_string()))??;
        self.publish(out).await;
        tracing::info!(
            model = response.model,
            version = response.version,
            devices = response.devices.len(),
            by,
            "deployed"
        );
        Ok((response, detail))
    }

    /// Renews the desired states sealed more than half a TTL ago (a new revision, the same
    /// models) and publishes them; returns how many.
    pub async fn refresh_expiring(&self) -> Result<usize, DeployError> {
        let this = self.clone();
        let out = tokio::task::spawn_blocking(move || -> Result<Vec<Outgoing>, DeployError> {
            let records = this.desired.refresh_due(crate::base::store::now_ms())?;
            Ok(this.desired.seal_many(&this.authority, &records)?)
        })
        .await
        .map_err(|e| DeployError::Interrupted(e.to_string()))??;
        let n = out.len();
        self.publish(out).await;
        Ok(n)
    }

    /// Hands sealed desired states to the broker link (retained; a link that is down sends
    /// every device's state again when it reconnects).
    pub async fn publish(&self, out: Vec<Outgoing>) {
        for o in out {
            if self.outgoing.send(o).await.is_err() {
                tracing::error!("the broker link is gone; desired states go out on reconnect");
                return;
            }
        }
    }

    /// The blocking part of [`Deployer::deploy`]: checks, stores, seals.
    fn apply(
        &self,
        request: &DeployRequest,
        by: &str,
    ) -> Result<(DeployResponse, String, Vec<Outgoing>), DeployError> {
        let record = self.registry.get(&request.model, &request.version)?;
        if record.validation_passed != Some(true) {
            let why =
                match record.validation.as_ref().and_then(|v| v.get("failures")).and_then(|f| f.as_array()) {
                    Some(failures) if !failures.is_empty() => format!(
                        "its validation failed: {}",
                        failures.iter().filter_map(|f| f.as_str()).collect::<Vec<_>>().join("; ")
                    ),
                    _ => "it has not been validated (`outpostctl model validate`)".to_owned(),
                };
            return Err(DeployError::NotDeployable { version: record.id(), why });
        }
        let all = self.devices.all()?;
        if let Some(id) = request.devices.iter().find(|id| !all.iter().any(|d| &d.id == *id)) {
            return Err(DeployError::UnknownDevice(id.clone()));
        }
        let targets: Vec<String> = all
            .iter()
            .filter(|d| {
                (request.devices.is_empty() || request.devices.contains(&d.id))
                    && matches(d, &request.selector)
            })
            .map(|d| d.id.clone())
            .collect();
        if targets.is_empty() {
            return Err(DeployError::NoTargets);
        }
        let out = match request.slot {
            // The primary; a candidate the device had is dropped (a switch or promotion, or
            // the operator moving on).
            None => self.set_primary(&targets, &record.name, &record.version, by, false)?,
            Some(mode) => {
                if let SlotMode::Canary { percent } = mode
                    && !(1..=99).contains(&percent)
                {
                    return Err(DeployError::CanaryPercent(percent));
                }
                for id in &targets {
                    match self.desired.get(id)?.as_ref().and_then(|r| r.models.get(&record.name)) {
                        None => {
                            return Err(DeployError::NoPrimary {
                                device: id.clone(),
                                model: record.name.clone(),
                            });
                        }
                        Some(m) if m.version == record.version => {
                            return Err(DeployError::AlreadyPrimary {
                                device: id.clone(),
                                version: record.id(),
                            });
                        }
                        Some(_) => {}
                    }
                }
                self.set_candidate(&targets, &record.name, &record.version, mode, by, false)?
            }
        };
        // The whole fleet → production; part of it → canary (a production version stays one).
        // Deploying an archived version is a rollback: it becomes production (or canary) again.
        let stage = if targets.len() == all.len() && request.slot.is_none() {
            Stage::Production
        } else {
            Stage::Canary
        };
        let stage = if record.stage == Stage::Production && stage == Stage::Canary {
            record.stage
        } else {
            let note = format!("deployed to {} device(s)", targets.len());
            self.registry.transition(&record.name, &record.version, stage, by, &note)?.stage
        };
        let detail = format!("{} device(s): {}", targets.len(), targets.join(","));
        let response =
            DeployResponse { model: record.name, version: record.version, devices: targets, stage };
        Ok((response, detail, out))
    }

    /// Sets `model` to `version` as the primary (no candidate) on `devices`; with `only_changed`,
    /// devices whose desired state already says so are left alone (and not sent again). Returns
    /// the sealed states to publish.
    pub fn set_primary(
        &self,
        devices: &[String],
        model: &str,
        version: &str,
        by: &str,
        only_changed: bool,
    ) -> Result<Vec<Outgoing>, DeployError> {
        let record = self.registry.get(model, version)?;
        let target = DesiredModel {
            name: model.to_owned(),
            version: version.to_owned(),
            bundle_sha256: record.bundle_sha256,
            watchdog: Some(self.watchdog),
            candidate: None,
        };
        let need = self.needing(devices, model, only_changed, |m| m != Some(&target))?;
        self.seal_all(self.desired.set(&need, model, Some(&target), by)?)
    }

    /// Puts `version` in the candidate slot (`mode`) beside each device's primary of `model`;
    /// a device with no primary is left alone. `only_changed` as for [`Deployer::set_primary`].
    pub fn set_candidate(
        &self,
        devices: &[String],
        model: &str,
        version: &str,
        mode: SlotMode,
        by: &str,
        only_changed: bool,
    ) -> Result<Vec<Outgoing>, DeployError> {
        let record = self.registry.get(model, version)?;
        let candidate = Candidate { version: version.to_owned(), bundle_sha256: record.bundle_sha256, mode };
        let need = self.needing(devices, model, only_changed, |m| {
            m.is_some_and(|m| m.candidate.as_ref() != Some(&candidate))
        })?;
        let changed = self.desired.update(
            &need,
            model,
            |current| {
                current.cloned().map(|mut m| {
                    m.candidate = Some(candidate.clone());
                    m
                })
            },
            by,
        )?;
        self.seal_all(changed)
    }

    /// Sets `device`'s entry for `model` back to `before` (None removes it) unless it already
    /// says that.
    pub fn restore(
        &self,
        device: &str,
        model: &str,
        before: Option<&DesiredModel>,
        by: &str,
    ) -> Result<Vec<Outgoing>, DeployError> {
        let now = self.desired.get(device)?.and_then(|rec| rec.models.get(model).cloned());
        if now.as_ref() == before {
            return Ok(Vec::new());
        }
        self.seal_all(self.desired.set(&[device.to_owned()], model, before, by)?)
    }

    fn needing(
        &self,
        devices: &[String],
        model: &str,
        only_changed: bool,
        differs: impl Fn(Option<&DesiredModel>) -> bool,
    ) -> Result<Vec<String>, DeployError> {
        if !only_changed {
            return Ok(devices.to_vec());
        }
        let mut need = Vec::new();
        for d in devices {
            let current = self.desired.get(d)?.and_then(|rec| rec.models.get(model).cloned());
            if differs(current.as_ref()) {
                need.push(d.clone());
            }
        }
        Ok(need)
    }

    fn seal_all(
        &self,
        changed: Vec<(String, crate::fleet::desired::DesiredRecord)>,
    ) -> Result<Vec<Outgoing>, DeployError> {
        Ok(self.desired.seal_many(&self.authority, &changed)?)
    }
}
/// The lease on renewing desired states (PostgreSQL): one replica renews them.
pub const REFRESH: &str = "desired-refresh";

/// Renews expiring desired states until `shutdown`: every quarter of the TTL (between 1 s and
/// a minute), so no agent's state lapses while the coordinator runs; on PostgreSQL only while
/// this replica holds the [`REFRESH`] lease (`fence`).
pub async fn run_refresh(
    deployer: Deployer,
    fence: Option<crate::base::pg::store::Fence>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let every = std::time::Duration::from_millis((deployer.desired.ttl_ms() / 4).clamp(1_000, 60_000));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if !crate::base::backing::leads(fence.as_ref()) {
            continue;
        }
        match deployer.refresh_expiring().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(devices = n, "desired states renewed before they expire"),
            Err(e) => tracing::error!(error = %e, "cannot renew expiring desired states"),
        }
    }
}
