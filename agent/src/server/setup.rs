//! What `serve` sets up before it listens: the device's trust (its signed root, enrolment key,
//! configured and bundle keys) and the telemetry pieces (outbox, link, reporter).

use std::sync::Arc;
use std::time::Duration;

use outpost_shared::protocol::messages::EventKind;
use outpost_shared::protocol::vocab::{LoadState, Slot};

use super::ServeError;
use crate::config::Config;
use crate::identity::{Identity, IdentityError};
use crate::link::{self, LinkSettings, LinkStats};
use crate::metrics::Metrics;
use crate::models::{ModelState, ModelTable};
use crate::outbox::Outbox;
use crate::prediction_log::PredictionLog;
use crate::telemetry::{Reporter, Window};
use crate::trust_root::Trust;

/// The telemetry pieces `serve` runs.
pub(super) struct Telemetry {
    pub(super) reporter: Arc<Reporter>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) link_stats: Arc<LinkStats>,
    pub(super) link: Option<LinkSettings>,
    /// The coordinator API from enrolment (bundle downloads), and the CA of its certificate.
    pub(super) api_url: Option<String>,
    pub(super) api_ca: Option<Vec<u8>>,
    pub(super) client_tls: Option<(Vec<u8>, Vec<u8>)>,
}

fn model_states(models: &ModelTable) -> Vec<outpost_shared::protocol::messages::ModelState> {
    models
        .entries()
        .iter()
        .flat_map(|entry| {
            let (state, reason) = match entry.state() {
                ModelState::Loading => (LoadState::Loading, None),
                ModelState::Ready(_) => (LoadState::Ready, None),
                ModelState::Failed(reason) => (LoadState::Failed, Some(reason)),
            };
            let primary = outpost_shared::protocol::messages::ModelState {
                name: entry.name().to_owned(),
                version: entry.version().unwrap_or_default(),
                slot: Slot::Primary,
                state,
                reason,
            };
            let candidate = entry.candidate().map(|c| outpost_shared::protocol::messages::ModelState {
                name: entry.name().to_owned(),
                version: c.served.version.clone(),
                slot: c.mode.slot(),
                state: LoadState::Ready,
                reason: None,
            });
            std::iter::once(primary).chain(candidate)
        })
        .collect()
}

pub(super) fn setup_telemetry(
    config: &Config,
    models: &Arc<ModelTable>,
    log: Option<&Arc<PredictionLog>>,
    metrics: &Arc<Metrics>,
    at_rest: &crate::at_rest::AtRest,
    trust: &Arc<Trust>,
) -> Result<Telemetry, ServeError> {
    let identity = Identity::load_or_create(&config.data_dir)?;
    let enrolment = identity.enrolment()?;
    let api_ca = identity.api_ca();
    let client_tls = identity.client_tls();
    let outbox = Arc::new(Outbox::open(&config.data_dir, config.telemetry.outbox_max_bytes, at_rest)?);
    let link = match &enrolment {
        None => {
            tracing::warn!(
                device = identity.device_id,
                "not enrolled: telemetry stays in the outbox (enrol with `outpost-agent enroll`, or carry it with `export-telemetry`)"
            );
            None
        }
        Some(enrolment) => {
            let url = config.telemetry.broker_url.clone().unwrap_or_else(|| enrolment.broker_url.clone());
            let (host, port) = link::parse_mqtts_url(&url).map_err(|problem| IdentityError::Corrupt {
                path: identity.dir.join("enrolment.json"),
                detail: problem.to_string(),
            })?;
            let control_key = enrolment.coordinator_key()?;
            if trust.version() == 0
                && config
                    .registry
                    .keys()
                    .is_ok_and(|keys| keys.iter().any(|k| k.key_id() == control_key.key_id()))
            {
                // Roles: the key from enrolment signs desired states and acks; release keys sign
                // bundles. One key in both places means one stolen key can do both.
                tracing::warn!(
                    key_id = control_key.key_id(),
                    "the coordinator key this device was enrolled with is also in registry.trusted_keys: one key signs \
                     both releases and control messages here (a device enrolled before the coordinator split its keys, or \
                     the online key listed as a release key) — enrol again and list only release keys"
                );
            }
            let session = identity.next_session();
            let now = outpost_shared::endpoints::now_ms();
            let presence = |p| {
                outpost_shared::protocol::presence::seal(&identity.signing, session, p, now)
                    .map_err(|e| IdentityError::Corrupt { path: identity.dir.clone(), detail: e.to_string() })
            };
            Some(LinkSettings {
                presence_online: presence(outpost_shared::protocol::presence::Presence::Online)?,
                presence_offline: presence(outpost_shared::protocol::presence::Presence::Offline)?,
                device_id: enrolment.device_id.clone(),
                host,
                port,
                tls: identity.broker_tls()?,
                trust: Arc::clone(trust),
                ack_timeout: Duration::from_secs(config.telemetry.ack_timeout_secs),
                max_in_flight: config.telemetry.max_in_flight,
                desired: None,
            })
        }
    };
    tracing::info!(
        device = identity.device_id,
        enrolled = enrolment.is_some(),
        backlog = outbox.stats().messages,
        "telemetry ready"
    );
    let table = Arc::clone(models);
    let system_metrics = Arc::clone(metrics);
    let link_stats = Arc::new(LinkStats {
        trusted: Arc::new(crate::trusted_time::TrustedClock::open(&config.data_dir)),
        ..LinkStats::default()
    });
    let skew_stats = Arc::clone(&link_stats);
    let reporter = Arc::new(Reporter {
        config: config.telemetry.clone(),
        window: Arc::new(Window::new()),
        outbox: Arc::clone(&outbox),
        key: Arc::new(identity.signing),
        log: log.cloned(),
        log_max_bytes: config.prediction_log.max_bytes,
        sampling: config.models.iter().map(|m| (m.name.clone(), m.sample_predictions)).collect(),
        system: Box::new(move || system_metrics.system_stats()),
        models: Box::new(move || model_states(&table)),
        sent: std::sync::Mutex::new((None, log.map_or(0, |l| l.stats().evicted))),
        clock_skew: Box::new(move || skew_stats.take_unreported_skew()),
        feedback_spool: Default::default(),
    });
    if let Some(r) = outbox.recovered() {
        // The damaged outbox held the batching cursor too: go on from the log's end (what it
        // had not batched yet went with it), and tell the coordinator what was lost.
        if r.moved_to.is_some()
            && let Some(log) = log
        {
            outbox.set_cursor(log.next_id()).map_err(ServeError::Outbox)?;
        }
        metrics.storage_quarantined("outbox");
        reporter.event(
            EventKind::StorageQuarantined { store: "outbox".into(), lost: r.what.clone() },
            r.what.clone(),
        );
    }
    let api_url = enrolment.as_ref().map(|e| e.api_url.clone());
    Ok(Telemetry { reporter, outbox, link_stats, link, api_url, api_ca, client_tls })
}

/// The device's trust ([`crate::trust_root`]): its held root, the key from its enrolment (if
/// enrolled) and `registry.trusted_keys`.
pub(super) fn open_trust(config: &Config) -> Result<Arc<Trust>, ServeError> {
    let configured = config.registry.keys().map_err(|e| ServeError::Registry(e.to_string()))?;
    let enrolled = crate::identity::enrolled_key(&config.data_dir)?;
    let dir = crate::identity::dir(&config.data_dir);
    let bundle_keys = config.registry.load_bundle_keys().map_err(ServeError::Config)?;
    let trust = Trust::open(&dir, enrolled, configured)?.with_bundle_keys(bundle_keys);
    if trust.version() > 0 {
        tracing::info!(version = trust.version(), "trust root held");
        if trust.release_configured() {
            tracing::info!(
                "registry.trusted_keys is set: bundles must be signed by one of those keys; the trust root's release \
                 role (its keys, threshold and rotations) does not apply to this device"
            );
        }
    }
    Ok(Arc::new(trust))
}
