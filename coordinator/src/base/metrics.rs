//! The coordinator's Prometheus metrics (`GET /metrics`).

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// The API's front door (`outpost_coordinator_api_connections_open`, …), rendered with the rest.
    pub front: std::sync::Arc<outpost_shared::front::Counters>,
    /// Envelopes by outcome: stored, duplicate, or the rejection reason.
    pub ingest: IntCounterVec,
    /// Enrolment attempts by outcome.
    pub enrolments: IntCounterVec,
    /// Devices by liveness (online, stale, offline, never_seen); set when scraped.
    pub devices: IntGaugeVec,
    /// Broker link events (connected, disconnected, ack_published).
    pub link: IntCounterVec,
    /// 1 while connected to the broker and subscribed to reports.
    pub broker_subscribed: prometheus::IntGauge,
    /// The embedded broker's front: connections open now (devices and the coordinator), and
    /// clients refused or cut off, by reason (see `outpost_shared::protocol::gate`).
    pub broker_connections: prometheus::IntGauge,
    pub broker_refused: IntCounterVec,
    /// API requests refused by authentication, role or rate limit (401, 403, 429).
    pub api_denied: IntCounterVec,
    /// Audit entries that could not be written.
    pub audit_failures: prometheus::IntCounter,
    /// Audit entries not written because their action was over its sampling rate (denials and
    /// refused enrolments under a flood), by action. Counted here, never silently dropped.
    pub audit_suppressed: IntCounterVec,
    /// Requests refused because their source address failed authentication too often.
    pub auth_throttled: IntCounterVec,
    /// Artifact downloads served, and their bytes.
    pub artifact_requests: prometheus::IntCounter,
    pub artifact_bytes: prometheus::IntCounter,
    /// Alerts firing now, by name; notifications sent, by sink and result.
    pub alerts_firing: IntGaugeVec,
    pub alert_notifications: IntCounterVec,
    /// Devices by what they report running: model, version, slot and state.
    pub model_devices: IntGaugeVec,
    /// Rollouts applying, baking or paused; automatic rollbacks, by model.
    pub rollouts_active: prometheus::IntGauge,
    pub rollout_rollbacks: IntCounterVec,
    /// Rollout records the engine wrote (a step applied, a bake judged, a phase changed).
    pub rollout_updates: prometheus::IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry.register(Box::new(c.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            c
        };
        let ingest = counter(
            "outpost_coordinator_ingest_total",
            "Telemetry envelopes received, by result (stored, duplicate, or why rejected).",
            "result",
        );
        let enrolments =
            counter("outpost_coordinator_enrolments_total", "Enrolment attempts, by result.", "result");
        let link =
            counter("outpost_coordinator_broker_events_total", "Broker link events, by kind.", "event");
        let devices = IntGaugeVec::new(
            Opts::new("outpost_coordinator_devices", "Enrolled devices, by liveness."),
            &["status"],
        )
        .unwrap_or_else(|e| panic!("metric devices: {e}"));
        registry.register(Box::new(devices.clone())).unwrap_or_else(|e| panic!("metric devices: {e}"));
        let broker_subscribed = prometheus::IntGauge::new(
            "outpost_coordinator_broker_subscribed",
            "1 while connected to the broker and subscribed to device reports.",
        )
        .unwrap_or_else(|e| panic!("metric broker_subscribed: {e}"));
        registry.register(Box::new(broker_subscribed.clone())).unwrap_or_else(|e| panic!("metric: {e}"));
        let broker_connections = prometheus::IntGauge::new(
            "outpost_coordinator_broker_connections",
            "Clients connected through the embedded broker's front now (devices and the coordinator).",
        )
        .unwrap_or_else(|e| panic!("metric broker_connections: {e}"));
        registry.register(Box::new(broker_connections.clone())).unwrap_or_else(|e| panic!("metric: {e}"));
        let broker_refused = counter(
            "outpost_coordinator_broker_refused_total",
            "Embedded-broker clients refused or disconnected, by reason (tls, not_enrolled, revoked, client_id, publish, subscribe, will, protocol, malformed, unexpected_packet, busy).",
            "reason",
        );
        let api_denied = counter(
            "outpost_coordinator_api_denied_total",
            "API requests refused before reaching a handler, by status (401, 403, 429).",
            "status",
        );
        let auth_throttled = counter(
            "outpost_coordinator_api_throttled_total",
            "API requests refused (429) because their source address failed authentication more than api.failed_auth_per_minute times in a minute, by reason.",
            "reason",
        );
        let audit_suppressed = counter(
            "outpost_coordinator_audit_suppressed_total",
            "Audit entries of a flooding action (auth.denied, device.enrol refusals) beyond its rate, not written but counted.",
            "action",
        );
        let plain = |name: &str, help: &str| {
            let c = prometheus::IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry.register(Box::new(c.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            c
        };
        let audit_failures =
            plain("outpost_coordinator_audit_failures_total", "Audit entries that could not be written.");
        let artifact_requests = plain(
            "outpost_coordinator_artifact_requests_total",
            "Bundle downloads served (whole or ranged).",
        );
        let artifact_bytes = plain("outpost_coordinator_artifact_bytes_total", "Bundle bytes served.");
        let alerts_firing = IntGaugeVec::new(
            Opts::new("outpost_coordinator_alerts_firing", "Alerts firing now, by alert name."),
            &["alertname"],
        )
        .unwrap_or_else(|e| panic!("metric alerts_firing: {e}"));
        registry.register(Box::new(alerts_firing.clone())).unwrap_or_else(|e| panic!("metric: {e}"));
        let alert_notifications = IntCounterVec::new(
            Opts::new(
                "outpost_coordinator_alert_notifications_total",
                "Alert notifications sent, by sink (alertmanager, webhook) and result (ok, failed).",
            ),
            &["sink", "result"],
        )
        .unwrap_or_else(|e| panic!("metric alert_notifications: {e}"));
        registry.register(Box::new(alert_notifications.clone())).unwrap_or_else(|e| panic!("metric: {e}"));
        let rollouts_active = prometheus::IntGauge::new(
            "outpost_coordinator_rollouts_active",
            "Rollouts applying, baking or paused.",
        )
        .unwrap_or_else(|e| panic!("metric rollouts_active: {e}"));
        registry.register(Box::new(rollouts_active.clone())).unwrap_or_else(|e| panic!("metric: {e}"));
        let rollout_rollbacks = counter(
            "outpost_coordinator_rollout_rollbacks_total",
            "Rollouts the engine rolled back by itself (a gate, a failed device, a timeout), by model.",
            "model",
        );
        let rollout_updates = plain(
            "outpost_coordinator_rollout_updates_total",
            "Rollout records the engine wrote: a step applied, a bake judged, a phase changed.",
        );
        let model_devices = IntGaugeVec::new(
            Opts::new(
                "outpost_coordinator_model_devices",
                "Devices by the model version they report running, its slot and state.",
            ),
            &["model", "version", "slot", "state"],
        )
        .unwrap_or_else(|e| panic!("metric model_devices: {e}"));
        registry.register(Box::new(model_devices.clone())).unwrap_or_else(|e| panic!("metric: {e}"));
        Metrics {
            front: std::sync::Arc::default(),
            model_devices,
            rollouts_active,
            rollout_rollbacks,
            rollout_updates,
            alerts_firing,
            alert_notifications,
            registry,
            ingest,
            enrolments,
            devices,
            link,
            broker_subscribed,
            broker_connections,
            broker_refused,
            api_denied,
            audit_failures,
            audit_suppressed,
            auth_throttled,
            artifact_requests,
            artifact_bytes,
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut text = String::from_utf8(out).unwrap_or_default();
        text.push_str(&self.front.render("outpost_coordinator_api"));
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
