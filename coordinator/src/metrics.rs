//! The coordinator's Prometheus metrics (`GET /metrics`).

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
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
        Metrics { registry, ingest, enrolments, devices, link, broker_subscribed }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
